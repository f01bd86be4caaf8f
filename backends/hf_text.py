# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""The shared shape of the Hugging Face text encoders (sentence-transformers, transformers).

A text operator tokenises with the model's own tokenizer and runs one export-friendly module
``(input_ids, attention_mask) -> embeddings``: the transformer, masked pooling (``cls``, ``mean``
or ``max``) and optional L2 normalisation. Subclasses load the model the way their library does
(:meth:`HFTextOperator.load_local`); a served copy never does: it builds the transformer from the
config and tokenizer files shipped in its model directory (``model_dir``), takes its weights
from ``checkpoint_path`` (or runs the ONNX file) and its pooling from its lock.

Copied into generated Triton repositories: relative imports and third-party packages only;
torch and transformers are imported when first needed.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Dict, List, Optional

import numpy as np

from .model_operator import ModelInput, ModelOperator
from .operator_base import OperatorParamError, TensorSpec
from .embedding_inputs import to_texts
from .weights import jsonable

#: Where a repository keeps the model's config and tokenizer files (no weights).
MODEL_DIR = "hf_model"
POOLING_MODES = ("cls", "mean", "max")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclasses.dataclass
class TextModel:
    """What a text operator runs: the tokenizer, the transformer (``None`` until built in a
    served copy), its config, and how its token vectors become one vector."""

    tokenizer: Any
    transformer: Any
    config: Any
    pooling: str
    normalize: bool
    max_length: int


def is_repo_id(name: str) -> bool:
    """Whether ``name`` can be a Hugging Face model id (``name`` or ``org/name``)."""
    return bool(_REPO_ID_RE.match(name)) and ".." not in name


class HFTextOperator(ModelOperator):
    """Base of the Hugging Face text operators: texts (``str`` or UTF-8 ``bytes``) -> vectors.

    Texts are tokenised by the model's own tokenizer, truncated at :meth:`max_length` tokens
    and run in groups of similar length, each padded to its longest (:func:`length_groups`).
    """

    inputs = [TensorSpec("text", "bytes")]

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._text_model: Optional[TextModel] = None

    # -- to implement ------------------------------------------------------------------------
    def load_local(self) -> TextModel:
        """Load the model through its library (hub or local files); record
        :attr:`weights_source`; raise :class:`~.weights.WeightsUnavailableError` on failure."""
        raise NotImplementedError

    # -- the model -----------------------------------------------------------------------------
    def text_model(self) -> TextModel:
        """The tokenizer and transformer, loaded once (from ``model_dir`` in a served copy)."""
        if self._text_model is None:
            self._text_model = (self._load_served() if self.params["model_dir"]
                                else self.load_local())
        return self._text_model

    def _load_served(self) -> TextModel:
        from transformers import AutoConfig, AutoTokenizer

        folder = self.resolve_path(self.params["model_dir"])
        lock = self.params.get("lock") or {}
        missing = [k for k in ("pooling", "normalize", "preprocess") if k not in lock]
        if missing:
            raise OperatorParamError(f"{self.name}: the lock param lacks {missing}; rebuild the "
                                     "repository with towhee_rt")
        return TextModel(
            tokenizer=AutoTokenizer.from_pretrained(folder, local_files_only=True),
            transformer=None,
            config=AutoConfig.from_pretrained(folder, local_files_only=True),
            pooling=lock["pooling"], normalize=bool(lock["normalize"]),
            max_length=int(lock["preprocess"]["max_length"]))

    def tokenizer(self):
        return self.text_model().tokenizer

    def max_length(self) -> int:
        """Tokens per text at most (longer texts are truncated)."""
        return self.text_model().max_length

    def build_torch_module(self):
        model = self.text_model()
        transformer = model.transformer
        if transformer is None:  # a served copy: the architecture from the shipped config
            transformer = _transformer_class(self.locked("architecture"))(model.config)
        return _encoder_class()(transformer.float(), model.pooling, model.normalize)

    # -- preprocessing -------------------------------------------------------------------------
    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        encoded = self.tokenizer()(to_texts(batch["text"]), padding=True,
                                   truncation="longest_first", max_length=self.max_length(),
                                   return_tensors="np")
        return {"input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64)}

    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        """Run texts of similar token counts together: a batch padded to its longest text
        costs the padding (mixed sentences: up to several times the real tokens; bench:
        dynamic batching of MiniLM int8 went from 250 to 150 sentences/s). Groups are formed
        over the texts sorted by length while padding stays within :data:`PAD_SLACK`."""
        texts = to_texts(batch["text"])
        if len(texts) < 2:
            return super().process_batch({"text": texts})
        lengths = [len(ids) for ids in self.tokenizer()(
            texts, truncation="longest_first", max_length=self.max_length())["input_ids"]]
        results: List[Any] = [None] * len(texts)
        for group in length_groups(lengths):
            out = super().process_batch({"text": [texts[i] for i in group]})
            for i, vector in zip(group, out[self.outputs[0].name]):
                results[i] = vector
        return {self.outputs[0].name: results}

    def model_inputs(self) -> List[ModelInput]:
        return [ModelInput("input_ids", "int64", (-1, -1), ((1, "sequence"),)),
                ModelInput("attention_mask", "int64", (-1, -1), ((1, "sequence"),))]

    def example_inputs(self, batch_size: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        # <start> random word pieces <end> then padding, rows of different lengths.
        tok = self.tokenizer()
        length = min(16, self.max_length())
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        low = min(max(tok.all_special_ids or [0]) + 1, len(tok) - 1)
        ids = np.full((batch_size, length), pad, dtype=np.int64)
        mask = np.zeros((batch_size, length), dtype=np.int64)
        for row in range(batch_size):
            n = int(rng.integers(1, length - 1))
            ids[row, 1:n + 1] = rng.integers(low, len(tok), n)
            ids[row, 0] = first if first is not None else ids[row, 1]
            ids[row, n + 1] = last if last is not None else ids[row, n]
            mask[row, :n + 2] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # -- what a repository needs ---------------------------------------------------------------
    def preprocess_config(self) -> Dict[str, Any]:
        return {"max_length": self.max_length(), "padding": "longest",
                "truncation": "longest_first"}

    def lock_info(self) -> Dict[str, Any]:
        if self.params.get("lock"):
            return dict(self.params["lock"])
        model = self.text_model()
        transformer = self.torch_module().transformer
        return {**super().lock_info(), "architecture": type(transformer).__name__,
                "pooling": model.pooling, "normalize": model.normalize}

    def served_files(self) -> Dict[str, Any]:
        model = self.text_model()

        def write(target) -> None:  # config and tokenizer files, never the weights
            target.mkdir(parents=True, exist_ok=True)
            model.config.save_pretrained(str(target))
            model.tokenizer.save_pretrained(str(target))

        return {MODEL_DIR: write}

    def served_params(self) -> Dict[str, Any]:
        return {**super().served_params(), "model_dir": MODEL_DIR}


#: A group of texts run together may hold at most this much padding (padded / real tokens).
PAD_SLACK = 1.25


def length_groups(lengths: List[int]) -> List[List[int]]:
    """Indices of ``lengths`` in groups of similar length (shortest first): each group padded
    to its longest costs at most :data:`PAD_SLACK` times its real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: List[List[int]] = []
    total = 0
    for i in order:
        group = groups[-1] if groups else None
        if group and (len(group) + 1) * lengths[i] <= PAD_SLACK * (total + lengths[i]):
            group.append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


def local_dir(op: ModelOperator, name: str) -> Optional[str]:
    """``name`` as an existing local directory (tried against ``artifact_dir`` first), or None."""
    for path in (op.resolve_path(name), name):
        if path and os.path.isdir(path):
            return os.path.abspath(path)
    return None


def check_pooling(name: str, mode: Any) -> str:
    if mode not in POOLING_MODES:
        raise OperatorParamError(f"{name}: pooling mode {mode!r} is not supported; expected "
                                 f"{', '.join(POOLING_MODES)}")
    return mode


def _transformer_class(architecture: Optional[str]):
    """The transformers class a lock names (e.g. ``BertModel``), else ``AutoModel.from_config``."""
    import transformers

    cls = getattr(transformers, architecture, None) if architecture else None
    return cls if cls is not None else transformers.AutoModel.from_config


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

