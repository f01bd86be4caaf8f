"""torch -> ONNX export of a model operator, with dynamic batch (and sequence) axes, cached.

The exporters are loud: a cold export of CLIP prints ~320 lines (``Torch IR graph at
exception`` ...) from torch's C++ code and then succeeds. Their output is captured
(:func:`captured_output`): logged at DEBUG after a success, quoted in the error after a failure.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..backends.model_operator import ModelOperator
from ..errors import FormatError
from . import cache

log = logging.getLogger("towhee_rt")
OPSET = 18
EXPORT_LIBRARIES = ("torch", "onnx", "timm", "open_clip_torch", "sentence-transformers",
                    "transformers")


def onnx_cache_key(op: ModelOperator, module=None, variant: str = "") -> str:
    """Key of ``op``'s ONNX export: operator, model params, weights and library versions."""
    parts = dict(operator=type(op).__name__, params=cache.model_params(op.params),
                 weights=cache.weights_digest(module or op.torch_module()),
                 versions=cache.library_versions(EXPORT_LIBRARIES), opset=OPSET,
                 layout="single-file")  # older entries may have external data
    if variant:
        parts["variant"] = variant
    return cache.cache_key(**parts)


def export_onnx(op: ModelOperator, module=None, variant: str = "") -> Path:
    """The ONNX file of ``op``'s torch model (exported once, then reused from the cache).

    ``module`` replaces ``op.torch_module()`` (e.g. an fp16 copy), ``variant`` names it in the
    cache key.
    """
    module = module or op.torch_module()
    return cache.cached_file("onnx", onnx_cache_key(op, module, variant), ".onnx",
                             lambda p: _export(op, module, p))


def _export(op: ModelOperator, module, path: Path) -> None:
    import torch

    specs = op.model_inputs()
    example = op.example_inputs(2, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[s.name]) for s in specs)
    names = [s.name for s in specs]
    dynamic_axes = {s.name: {0: "batch", **dict(s.dynamic_axes)} for s in specs}
    dynamic_axes["embedding"] = {0: "batch"}
    errors, output = [], []
    for dynamo in (False, True):  # the TorchScript exporter is faster; dynamo is the fallback
        try:
            with captured_output(output), warnings.catch_warnings(), \
                    torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                # One self-contained file: the cache renames it and the repository copies it
                # alone, so weights must not sit in an external-data file beside it.
                kwargs = {"dynamic_axes": dynamic_axes} if not dynamo else {
                    "dynamic_shapes": tuple(_dims(s) for s in specs), "external_data": False}
                torch.onnx.export(module, args, str(path), input_names=names,
                                  output_names=["embedding"], opset_version=OPSET,
                                  dynamo=dynamo, **kwargs)
            _check(path)
            if output[-1].strip():
                log.debug("the ONNX exporter's output:\n%s", output[-1])
            return
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    printed = "\n".join(text for text in output if text.strip())
    raise FormatError("onnx export failed: " + "; ".join(errors)
                      + ("\nthe exporters printed (last 40 lines):\n"
                         + "\n".join(printed.splitlines()[-40:]) if printed else ""))


@contextlib.contextmanager
def captured_output(into: list):
    """Send what this process writes to stdout and stderr (``sys.stdout``/``sys.stderr`` and
    C++ code's file descriptors 1 and 2) to a temporary file while the block runs; append its
    text to ``into``. Other threads' output in the meantime is captured too: keep blocks
    short."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, \
            open(os.dup(sink.fileno()), "w", buffering=1, errors="replace") as text, \
            contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            text.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            into.append(sink.read().decode(errors="replace"))


def _dims(spec):
    import torch

    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    for axis, name in spec.dynamic_axes:
        dims[axis] = torch.export.Dim(name, min=1, max=8192)
    return dims


def _check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))
    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise FormatError("the export keeps weights in an external-data file (models over "
                          "2 GB); such models are not supported by the onnx format yet")
