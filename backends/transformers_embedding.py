# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""``text_embedding.transformers``: text embeddings from a plain Hugging Face encoder model.

``AutoTokenizer`` + ``AutoModel`` (through the Hugging Face cache; ``HF_HOME``, ``HF_HUB_CACHE``
and ``HF_HUB_OFFLINE`` apply), then ``cls`` or ``mean`` pooling of the last hidden state, as one
export-friendly module (:mod:`.hf_text`). Copied into generated Triton repositories: relative
imports and third-party packages only; heavy packages are imported when first needed.
"""
from __future__ import annotations

import contextlib
from typing import Any

from .hf_text import HFTextOperator, TextModel, check_pooling, is_repo_id, local_dir
from .model_operator import ModelOperator
from .operator_base import OperatorParamError, Param, positive
from .weights import (download_hint, hub_or_cache, hub_source, no_progress_bars,
                      weights_unavailable)


def _pooling(value: Any) -> Any:
    return None if value in ("cls", "mean") else "must be 'cls' or 'mean'"


class TransformersEmbedding(HFTextOperator):
    """Embed texts with a Hugging Face encoder (BERT, RoBERTa, BGE, E5...): one vector per text.

    Params: ``model_name`` (required: a hub model id such as ``'BAAI/bge-small-en-v1.5'`` or a
    local directory that ``AutoModel.from_pretrained`` reads), ``pooling`` (``'cls'``, the
    default: the first token's last hidden state; ``'mean'``: the mean over the text's tokens),
    ``normalize`` (L2-normalise, default False), ``max_length`` (tokens per text; default the
    tokenizer's ``model_max_length``, at most the model's ``max_position_embeddings``),
    ``checkpoint_path`` (a state dict of this operator's module, applied over the model's own
    weights), plus the :class:`ModelOperator` params.

    Example::

        op = TransformersEmbedding(model_name='BAAI/bge-small-en-v1.5', normalize=True)
        op.ensure_setup('cpu')
        vec = op.process_batch({'text': ['hello world']})['embedding'][0]   # shape (384,)
    """

    name = "text_embedding.transformers"
    params_spec = ModelOperator.params_spec + (
        Param("model_name", (str,), doc="a Hugging Face model id or a local model directory",
              check=lambda v: None if v else "must not be empty"),
        Param("pooling", (str,), "cls", "'cls' (first token) or 'mean' (over the tokens)",
              _pooling),
        Param("normalize", (bool,), False, "L2-normalise the vectors inside the model"),
        Param("max_length", (int,), None, "tokens per text at most", positive),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        name = self.params["model_name"]
        if not self.params["model_dir"] and not local_dir(self, name) and not is_repo_id(name):
            raise OperatorParamError(
                f"{self.name}: model_name {name!r} is neither a local directory nor a Hugging "
                f"Face model id such as 'BAAI/bge-small-en-v1.5'")

    def load_local(self) -> TextModel:
        from transformers import AutoModel, AutoTokenizer

        name = self.params["model_name"]
        folder = local_dir(self, name)
        try:
            with no_progress_bars(), (contextlib.nullcontext() if folder else hub_or_cache()):
                tokenizer = AutoTokenizer.from_pretrained(folder or name)
                model = AutoModel.from_pretrained(folder or name)
        except Exception as exc:  # noqa: BLE001 - every download/cache failure, reported once
            if folder:
                raise OperatorParamError(f"{self.name}: cannot load the model in {folder!r}: "
                                         f"{type(exc).__name__}: {str(exc)[:400]}") from None
            raise weights_unavailable(self.name, repr(name), name, exc, [
                download_hint(name),
                "pass model_name='<local directory>' holding the model (as save_pretrained "
                "writes it)"]) from None
        self.weights_source = ({"source": "local-dir", "path": folder} if folder
                               else hub_source(name))
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        max_length = self.params["max_length"] or min(int(tokenizer.model_max_length), limit)
        return TextModel(tokenizer=tokenizer, transformer=model, config=model.config,
                         pooling=check_pooling(self.name, self.params["pooling"]),
                         normalize=self.params["normalize"], max_length=max_length)
