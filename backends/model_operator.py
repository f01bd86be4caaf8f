# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""ModelOperator: the shared shape of every operator that runs a neural embedding model.

A model operator splits its work in three: ``preprocess`` (items -> batched model-input
arrays, numpy), the model itself (run by a *runner*: torch eager, torch.compile, ONNX Runtime or
TensorRT, chosen by the ``format`` param), and ``postprocess`` (model output -> items).
Subclasses describe the torch model once; every format is derived from it.

Like ``operator_base.py`` this module is copied into generated Triton repositories: relative
imports and third-party packages only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np

from .operator_base import Operator, OperatorParamError, Param, TensorSpec, positive
from .weights import WeightsUnavailableError, file_sha256
from . import format_runners


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One input tensor of the model (after preprocessing), with ``-1`` for dynamic axes.

    Axis 0 is always the batch axis; ``dynamic_axes`` names the other dynamic axes for ONNX
    export (e.g. ``{1: 'sequence'}`` for token ids).
    """

    name: str
    dtype: str
    shape: Tuple[int, ...]
    dynamic_axes: Tuple[Tuple[int, str], ...] = ()


#: Model formats a runner exists for (``format`` param).
RUN_FORMATS = ("torch", "torch_compile", "onnx", "onnx_int8", "tensorrt", "tensorrt_fp16")


def _run_format(value: Any) -> Optional[str]:
    return None if value in RUN_FORMATS else f"must be one of {', '.join(RUN_FORMATS)}"


class ModelOperator(Operator):
    """Base class of the embedding operators (timm, CLIP, sentence-transformers).

    Params understood by every model operator:
      ``checkpoint_path``: weights file (``.safetensors``, ``.pt``/``.pth`` state dict); relative
        paths are resolved against ``artifact_dir`` (the model directory inside Triton). It wins
        over pretrained weights: given one, nothing is downloaded;
      ``seed``: seed for random initialisation (``pretrained=False``, default 0), so that the
        same params build the same model in every process;
      ``num_threads``: intra-op threads for the CPU runtimes (default: the runtime's own; the
        Triton adapter gives each instance its share of the serving machine's cores).
    Operators whose library has pretrained weights add ``pretrained`` (default: load them, the
    way the library itself does; weights that cannot be loaded raise
    :class:`~.weights.WeightsUnavailableError`, never fall back to random ones).
    Set by towhee_rt's build, not by users: ``format`` (``torch``, ``torch_compile``,
    ``onnx``, ``onnx_int8`` or ``tensorrt``; chosen from ``format_priority``), ``model_file``
    (the exported ONNX file or TensorRT engine of the non-torch formats), ``model_dir`` (the
    model's config and tokenizer files shipped in the repository, no weights) and ``lock``
    (where the weights came from and the preprocessing config; see :meth:`lock_info`). A served
    copy never downloads: it is built from ``model_dir`` / the library's registry, takes its
    weights from ``checkpoint_path`` or ``model_file`` and its preprocessing from ``lock``.
    """

    is_model: ClassVar[bool] = True
    outputs: ClassVar[List[TensorSpec]] = [TensorSpec("embedding", "float32", (-1,))]
    params_spec: ClassVar[Tuple[Param, ...]] = Operator.params_spec + (
        Param("checkpoint_path", (str,), None, "a .safetensors or torch state dict file"),
        Param("seed", (int,), 0, "seed of the random initialisation without a checkpoint"),
        Param("num_threads", (int,), None, "intra-op threads of the CPU runtime", positive),
        Param("format", (str,), "torch", "the model format", _run_format, internal=True),
        Param("model_file", (str,), None, "the exported model file", internal=True),
        Param("model_dir", (str,), None, "the model's config and tokenizer files in the "
              "repository", internal=True),
        Param("lock", (dict,), None, "where the weights came from and the preprocessing config",
              internal=True),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.runner: Optional[format_runners.Runner] = None
        self._torch_module = None
        #: How :meth:`build_torch_module` got pretrained weights (see :meth:`lock_info`).
        self.weights_source: Dict[str, Any] = {}

    # -- to implement in subclasses --------------------------------------------------------
    def build_torch_module(self):
        """Return the ``torch.nn.Module`` mapping model inputs to embeddings, with the weights
        :meth:`weights_mode` asks for: ``'pretrained'`` (loaded by the library; record where from
        in :attr:`weights_source`), else random (seeded by the caller; a checkpoint is loaded
        afterwards by :meth:`torch_module`)."""
        raise NotImplementedError

    def model_inputs(self) -> List[ModelInput]:
        """Describe the model's input tensors, in the module's positional order."""
        raise NotImplementedError

    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        """Turn a batch of operator input items into batched model-input arrays."""
        raise NotImplementedError

    def example_inputs(self, batch_size: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        """Random model inputs of ``batch_size`` for export and parity checks."""
        raise NotImplementedError

    def postprocess(self, output: np.ndarray) -> List[np.ndarray]:
        """Split the model's batched output into per-item embeddings."""
        return list(np.asarray(output, dtype=np.float32))

    def adapt_state_dict(self, state: Dict[str, Any], module) -> Dict[str, Any]:
        """Map a loaded checkpoint onto ``module``'s keys before the strict load (default: as is).

        Lets an operator accept its library's own checkpoints (e.g. a timm state dict with its
        classifier, a full open_clip state dict) as well as the module's own ``state_dict()``.
        """
        return state

    def preprocess_config(self) -> Dict[str, Any]:
        """The preprocessing config (JSON) a served copy reads from its lock (default: none)."""
        return {}

    def served_files(self) -> Dict[str, Any]:
        """Files or directories, besides the weights, that a served copy needs, as ``{name in
        the model directory: write(path)}`` (e.g. tokenizer files); see :meth:`served_params`."""
        return {}

    def served_params(self) -> Dict[str, Any]:
        """Params that make a served copy load from the repository only (no hub): by default
        ``pretrained=False`` for operators that take it (the weights come from the shipped
        file)."""
        declared = {p.name for p in self.params_spec}
        return {"pretrained": False} if "pretrained" in declared else {}

    def lock_info(self) -> Dict[str, Any]:
        """Where this operator's weights came from (JSON), for the repository's lock:
        ``{'source': 'hf-hub', 'repo_id', 'revision', ...}`` for pretrained weights,
        ``{'source': 'checkpoint', 'checkpoint', 'checkpoint_sha256'}`` or
        ``{'source': 'random', 'seed'}``; plus ``'preprocess'``. Call after :meth:`torch_module`."""
        if self.params.get("lock"):  # a served copy: what its build recorded
            return dict(self.params["lock"])
        mode = self.weights_mode()
        if mode == "checkpoint":
            path = self.resolve_path(self.params["checkpoint_path"])
            info = {"source": "checkpoint", "checkpoint": path,
                    "checkpoint_sha256": file_sha256(path)}
            if self.weights_source:  # the named model it was applied over (text models)
                info["base"] = dict(self.weights_source)
        elif mode == "random":
            info = {"source": "random", "seed": self.params["seed"]}
        else:  # what build_torch_module recorded; else the operator made them itself
            info = dict(self.weights_source) or {"source": "operator"}
        return {**info, "preprocess": self.preprocess_config()}

    def locked(self, key: str, default: Any = None) -> Any:
        """An entry of the ``lock`` param (set in a served copy), or ``default``."""
        return (self.params.get("lock") or {}).get(key, default)

    # -- shared machinery -------------------------------------------------------------------
    def weights_mode(self) -> str:
        """``'checkpoint'`` (``checkpoint_path`` wins), ``'pretrained'`` (the library loads
        them) or ``'random'`` (``pretrained=False``, or a served copy's ``model_dir``)."""
        if self.params["checkpoint_path"]:
            return "checkpoint"
        if self.params.get("model_dir") or not self.params.get("pretrained", True):
            return "random"
        return "pretrained"

    def torch_module(self):
        """The torch model with its weights loaded (built once, eval mode, no grad).

        Raises :class:`~.weights.WeightsUnavailableError` (an :class:`OperatorParamError`)
        when the weights asked for cannot be loaded.
        """
        if self._torch_module is None:
            import torch

            with _seeded(self.params["seed"]):
                module = self.build_torch_module()
            path = self.resolve_path(self.params["checkpoint_path"])
            if path:
                self._load_checkpoint(module, path)
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
            self._torch_module = module
        return self._torch_module

    def _load_checkpoint(self, module, path: str) -> None:
        if not os.path.isfile(path):
            raise WeightsUnavailableError(
                f"{self.name}: checkpoint_path {path!r} is not a file; pass the path of a "
                f".safetensors or torch state dict file, or leave checkpoint_path out")
        try:
            state = self.adapt_state_dict(load_state_dict(path), module)
            module.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
            raise WeightsUnavailableError(
                f"{self.name}: checkpoint_path {path!r} does not fit "
                f"{self.params.get('model_name')!r}: {type(exc).__name__}: {first}") from None

    def resolve_path(self, path: Optional[str]) -> Optional[str]:
        """Resolve a relative file param against ``artifact_dir`` when one is set."""
        if not path:
            return None
        if not os.path.isabs(path) and self.artifact_dir:
            return os.path.join(self.artifact_dir, path)
        return path

    def use_runner(self, runner: "format_runners.Runner") -> None:
        """Run with ``runner`` (already built and verified, e.g. by the build's parity check)
        instead of building one from the params in :meth:`setup`."""
        self.runner = runner

    def setup(self, device: str = "cpu") -> None:
        super().setup(device)
        if self.runner is not None:
            return
        fmt, threads = self.params["format"], self.params["num_threads"]
        if fmt in ("torch", "torch_compile"):
            self.runner = format_runners.TorchRunner(self.torch_module(), device,
                                               compile=fmt == "torch_compile",
                                               num_threads=threads)
            return
        model_file = self.resolve_path(self.params["model_file"])
        if not model_file:
            raise OperatorParamError(f"{self.name}: format {fmt!r} needs the 'model_file' param")
        self.runner = format_runners.make_file_runner(fmt, model_file, device, num_threads=threads)

    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        inputs = self.preprocess(batch)
        output = self.runner.run(inputs)
        return {self.outputs[0].name: self.postprocess(output)}


def load_state_dict(path: str) -> Dict[str, Any]:
    """Load a state dict from ``.safetensors`` or a torch file (weights only, never pickled code)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU generator for model construction without disturbing the caller's."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

