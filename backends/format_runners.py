# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Runners: execute a model in one format on batched numpy inputs, returning a numpy array.

Copied into generated Triton repositories: relative imports and third-party packages only;
heavy packages are imported when a runner is built, with an install hint when missing.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np


class Runner:
    """Runs a model: ``run({input name: batched array}) -> batched output array``."""

    format: str = ""

    def run(self, inputs: Dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class TorchRunner(Runner):
    """Eager torch (or ``torch.compile``) on CPU or CUDA; inputs are passed positionally."""

    format = "torch"

    def __init__(self, module, device: str = "cpu", compile: bool = False,
                 num_threads: Optional[int] = None):
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = torch.device(device)
        self.module = module.to(self.device)
        if compile:
            self.format = "torch_compile"
            self.module = torch.compile(self.module)

    def run(self, inputs: Dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                       for a in inputs.values()]
            out = self.module(*tensors)
        return out.float().cpu().numpy()


def make_file_runner(fmt: str, path: str, device: str = "cpu",
                     num_threads: Optional[int] = None) -> Runner:
    """Build the runner for an exported model file (``onnx``, ``onnx_int8``, ``tensorrt``)."""
    if fmt in ("onnx", "onnx_int8"):
        return OnnxRunner(path, device, num_threads=num_threads, fmt=fmt)
    if fmt in ("tensorrt", "tensorrt_fp16"):
        return TensorRTRunner(path, device)
    raise ValueError(f"unknown model format {fmt!r}; expected torch, torch_compile, onnx, "
                     "onnx_int8 or tensorrt")


class OnnxRunner(Runner):
    """ONNX Runtime: CUDA provider when asked for a GPU and available, CPU provider otherwise."""

    def __init__(self, path: str, device: str = "cpu", num_threads: Optional[int] = None,
                 fmt: str = "onnx"):
        import onnxruntime as ort

        self.format = fmt
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        # Spinning threads burn the cores that decode, preprocessing and other instances need
        # (bench/results/tuning.md: +8% served with one 2-thread instance).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: np.ascontiguousarray(inputs[name]) for name in self.input_names}
        return self.session.run(None, feed)[0]


class TensorRTRunner(Runner):
    """A TensorRT engine (TensorRT 10/11 named-tensor API) with torch CUDA buffers.

    Inputs may be numpy arrays or torch CUDA tensors (e.g. handed over by DLPack from the
    previous Triton model); they are used in place when already on the right device.
    """

    format = "tensorrt"

    def __init__(self, path: str, device: str = "cuda:0"):
        try:
            import tensorrt as trt
        except ImportError:
            raise ImportError("format 'tensorrt' needs TensorRT: pip install 'towhee_rt[gpu]'")
        import torch

        if not device.startswith("cuda"):
            raise ValueError("format 'tensorrt' needs a GPU: set op_config device_ids=[0]")
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"cannot load TensorRT engine {path} (built for another GPU or "
                               "TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def run(self, inputs):
        import torch

        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream()
            keep = []
            for name in self.inputs:
                value = inputs[name]
                tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(
                    np.ascontiguousarray(value))
                tensor = tensor.to(self.device, non_blocking=True).contiguous()
                keep.append(tensor)
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            out_name = self.outputs[0]
            shape = tuple(self.context.get_tensor_shape(out_name))
            dtype = torch.float16 if "HALF" in str(self.engine.get_tensor_dtype(out_name)) \
                else torch.float32
            output = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(out_name, output.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
        return output.float().cpu().numpy()
