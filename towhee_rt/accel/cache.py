"""The on-disk cache of exported models (ONNX files, TensorRT engines).

Entries are keyed by everything that changes the file: the operator and its params, a hash of
the weights, and the versions of the libraries that produced it. Writes are atomic (temporary
file, then rename), so concurrent builds never read half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

#: Params that do not change an exported model (runtime knobs and file locations).
RUNTIME_PARAMS = frozenset({"format", "model_file", "num_threads", "artifact_dir", "preprocess",
                            "checkpoint_path"})


def cache_dir() -> Path:
    """towhee_rt's cache directory: ``$TOWHEE_RT_CACHE``, else ``$XDG_CACHE_HOME/towhee_rt``,
    else ``~/.cache/towhee_rt``. Exports live here, and so does the runnable copy of the
    embedded tritonserver (:mod:`towhee_rt.triton.embedded`)."""
    root = os.environ.get("TOWHEE_RT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "towhee_rt")
    return Path(root)


def weights_digest(module) -> str:
    """sha256 over a torch module's state dict (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def library_versions(names: Iterable[str]) -> Mapping[str, str]:
    """Installed versions of ``names`` (``'-'`` for those not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def cache_key(**parts: Any) -> str:
    """A short stable key from JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def model_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """The params that define the model (runtime-only ones removed)."""
    return {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}


def cached_file(kind: str, key: str, suffix: str, produce: Callable[[Path], None]) -> Path:
    """Return ``<cache>/<kind>/<key><suffix>``, calling ``produce(tmp_path)`` when missing."""
    target = cache_dir() / kind / f"{key}{suffix}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        produce(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
