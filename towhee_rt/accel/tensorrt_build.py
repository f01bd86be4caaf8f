"""ONNX -> TensorRT engine, with an optimization profile over the batch axis, cached.

Follows the TensorRT 10 Python API (explicit batch networks, ``build_serialized_network``,
named I/O tensors) and TensorRT 11, where weakly typed networks and ``BuilderFlag.FP16`` are
gone: there fp16 engines are built from an fp16 ONNX export as strongly typed networks.
Engines are specific to a GPU model and TensorRT version, so both are part of the cache key.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from ..backends.model_operator import ModelOperator
from ..errors import FormatError
from ..op_config import OpConfig
from . import cache

log = logging.getLogger("towhee_rt")
WORKSPACE_BYTES = 2 << 30
#: Upper bound for dynamic non-batch axes (e.g. token sequence length) in the profile.
MAX_SEQUENCE = 512


def unavailable_reason(device_ids: Sequence[int]) -> Optional[str]:
    """Why TensorRT cannot be used here (``None`` when it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "module not installed (pip install 'towhee_rt[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    if not device_ids:
        return "the operator runs on CPU; set op_config device_ids=[0] to run it on a GPU"
    return None


def batch_profile(config: OpConfig) -> tuple:
    """(min, opt, max) batch sizes: 1, the largest preferred size, the max batch size."""
    batching = config.dynamic_batching
    largest = config.max_batch_size
    opt = max(batching.preferred_batch_size) if batching and batching.preferred_batch_size \
        else largest
    return 1, opt, largest


def build_engine(op: ModelOperator, config: OpConfig, fp16: bool = False) -> Path:
    """The engine file for ``op`` on this GPU (built once, then reused from the cache)."""
    import tensorrt as trt
    import torch

    from .onnx_export import export_onnx, onnx_cache_key

    device = config.device_ids[0]
    strongly_typed = fp16 and not hasattr(trt.BuilderFlag, "FP16")
    onnx_path = _fp16_onnx(op) if strongly_typed else export_onnx(op)
    profile = batch_profile(config)
    key = cache.cache_key(onnx=onnx_cache_key(op), trt=trt.__version__, profile=profile,
                          fp16=fp16, gpu=torch.cuda.get_device_name(device),
                          capability=torch.cuda.get_device_capability(device))
    return cache.cached_file("tensorrt", key, ".plan", lambda p: _build(
        op, onnx_path, p, profile, fp16, strongly_typed))


def _build(op: ModelOperator, onnx_path: Path, target: Path, profile: tuple, fp16: bool,
           strongly_typed: bool) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FormatError(f"tensorrt: ONNX parse failed: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16 and not strongly_typed:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    optimization = builder.create_optimization_profile()
    low, opt, high = profile
    for spec in op.model_inputs():
        shapes = [_shape(spec, batch, seq) for batch, seq in
                  ((low, 1), (opt, MAX_SEQUENCE // 4), (high, MAX_SEQUENCE))]
        optimization.set_shape(spec.name, *shapes)
    builder_config.add_optimization_profile(optimization)
    engine = builder.build_serialized_network(network, builder_config)
    if engine is None:
        raise FormatError("tensorrt: engine build failed (see the TensorRT log above)")
    target.write_bytes(bytes(engine))


def _shape(spec, batch: int, sequence: int) -> tuple:
    dynamic = dict(spec.dynamic_axes)
    dims = [batch] + [sequence if axis in dynamic else size
                      for axis, size in enumerate(spec.shape[1:], start=1)]
    return tuple(dims)


def _fp16_onnx(op: ModelOperator) -> Path:
    """An ONNX export whose weights and arithmetic are fp16 (for strongly typed networks)."""
    import copy

    import torch

    from .onnx_export import export_onnx

    module = _half_wrapper(copy.deepcopy(op.torch_module()).half())
    try:
        return export_onnx(op, module=module, variant="fp16")
    except torch.OutOfMemoryError as exc:  # pragma: no cover - GPU only
        raise FormatError(f"tensorrt: fp16 export ran out of memory: {exc}") from None


def _half_wrapper(module):
    """Wrap a half module: cast float inputs to fp16 and the output back to fp32."""
    import torch

    class HalfWrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            args = [a.half() if a.is_floating_point() else a for a in args]
            return self.inner(*args).float()

    return HalfWrapper(module)
