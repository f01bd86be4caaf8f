"""A pipeline's fingerprint: 16 hex characters that change exactly when its vectors may change.

Vectors from two pipelines are comparable (one index, one search) only when the same operators
ran with the same weights and the same preprocessing. The fingerprint is the first 16 hex
characters of the sha256 of a JSON list with one entry per built step, in order:

* the operator's registered name (``'image_embedding.timm'``);
* its params, less the ones that cannot change a vector (:data:`NOT_VECTOR_PARAMS`: threads,
  batch sizes, where files live, what items a decoder accepts and its limits, which only make
  an item fail) and less the weights' bookkeeping (``lock``, ``pretrained``, ``seed``,
  ``checkpoint_path``: the weights are identified below);
* for a model operator, its weights: the sha256 of their state dict (the
  ``weights.safetensors`` a torch build ships, whatever format was chosen), and from its lock
  the model name, the preprocessing (``preprocess``, and ``pooling``, ``normalize``,
  ``architecture`` for text models) and the chosen **format** (``onnx_int8`` or
  ``tensorrt_fp16`` vectors differ from ``torch`` ones, so the format counts); an int8
  model also counts by the sha256 of its quantized file, whose scales come from the
  calibration data.

Left out: where the weights came from (hub revision, package, checkpoint path: the same weights
give the same vectors, and their sha256 says so), library versions, build times, absolute paths
(a string param that is an absolute path counts by its file name only), instance counts,
dynamic batching and every other ``op_config`` key. So rebuilding a pipeline, on this machine
or another, gives the same fingerprint; other weights, another preprocessing or another format
give another.

It is :attr:`towhee_rt.Pipeline.fingerprint` locally, the ensemble's ``towhee_fingerprint``
config parameter when served (read by :attr:`towhee_rt.Client.fingerprint`), the
``X-Model-Fingerprint`` header of the OpenAI gateway, and the collection property that
:mod:`towhee_rt.milvus` checks before inserting.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["FINGERPRINT_LENGTH", "NOT_VECTOR_PARAMS", "fingerprint", "step_identity"]

#: Hex characters of a fingerprint.
FINGERPRINT_LENGTH = 16
#: Operator params that cannot change a vector: runtime knobs, file locations, what a decoder
#: accepts (an item it refuses fails, it does not get another vector), and the weights'
#: bookkeeping (the weights themselves count through their sha256).
NOT_VECTOR_PARAMS = frozenset({
    "num_threads", "batch_size", "artifact_dir", "model_dir", "model_file", "in_process",
    "timeout", "max_bytes", "max_pixels", "allow_paths", "allow_urls", "allow_private_networks",
    "lock", "format", "pretrained", "seed", "checkpoint_path",
})
#: Lock entries that say where weights came from or what built them, not what they compute.
NOT_VECTOR_LOCK_KEYS = frozenset({
    "operator", "source", "repo_id", "revision", "tag", "package", "version", "url", "path",
    "checkpoint", "checkpoint_sha256", "base", "seed", "file", "sha256", "libraries", "format",
})


def step_identity(name: str, params: Mapping[str, Any], format: Optional[str] = None,
                  weights_sha256: Optional[str] = None) -> Dict[str, Any]:
    """What one step contributes to the fingerprint (JSON): see the module docstring."""
    identity: Dict[str, Any] = {
        "operator": name,
        "params": {k: _portable(v) for k, v in sorted(params.items())
                   if k not in NOT_VECTOR_PARAMS},
    }
    if format is not None:
        lock = params.get("lock") or {}
        identity["format"] = format
        identity["weights"] = weights_sha256 or lock.get("sha256")
        identity["model"] = {k: _portable(v) for k, v in sorted(lock.items())
                             if k not in NOT_VECTOR_LOCK_KEYS}
        if "int8" in format:  # its scales come from the calibration data: the file counts
            identity["quantized"] = lock.get("sha256")
    return identity


def fingerprint(identities: Sequence[Mapping[str, Any]]) -> str:
    """The fingerprint of the steps whose :func:`step_identity` are ``identities``."""
    text = json.dumps(list(identities), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def _portable(value: Any) -> Any:
    """``value`` with every absolute path replaced by its file name (the same pipeline built
    from another directory has the same fingerprint)."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value.rstrip(os.sep)) or value
    if isinstance(value, Mapping):
        return {str(k): _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    return value


def describe(identities: Sequence[Mapping[str, Any]]) -> List[str]:
    """One line per step, for messages: ``'1:image_embedding.timm onnx weights 3f1c...'``."""
    lines = []
    for index, identity in enumerate(identities):
        line = f"{index}:{identity['operator']}"
        if identity.get("format"):
            line += f" {identity['format']} weights {str(identity.get('weights'))[:12]}"
        lines.append(line)
    return lines
