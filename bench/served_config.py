"""The settings of one served towhee_rt pipeline in the benchmarks (:class:`ServedConfig`),
shared by the fp32 rows (:mod:`bench.served`) and the int8 rows (:mod:`bench.int8`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class ServedConfig:
    """Settings of one served towhee_rt pipeline (what ``op_config`` and params can say)."""

    label: str
    #: Triton instances of the model operator; None: the builder's default (2 on CPU since
    #: 5bb4265, each with num_threads = cores // 2).
    model_instances: Optional[int] = None
    decode_instances: int = 1
    #: ONNX Runtime intra-op threads per model instance; None: the builder's default
    #: (cores // model instances).
    num_threads: Optional[int] = None
    #: None (off), True (towhee_rt defaults) or a dict of dynamic_batching keys.
    dynamic_batching: Any = None
    #: Environment variables for tritonserver and its stubs (``serve(..., env=...)``).
    server_env: Tuple[Tuple[str, str], ...] = ()
    #: The model operator's format: ``onnx`` or ``onnx_int8`` (calibrated on the bench inputs).
    format: str = "onnx"
    #: Params of the decode operator, e.g. ``(("min_side", 256),)``.
    decode_params: Tuple[Tuple[str, Any], ...] = ()
    #: Params of the model operator, e.g. ``(("preprocess", "cv2"),)``.
    model_params: Tuple[Tuple[str, Any], ...] = ()
    #: ``pipeline_config(format_priority=...)`` as a user writes it, e.g. ``("onnx_int8",
    #: "onnx")``: the build serves the first format that passes its checks (the int8 gate), and
    #: the rows say which one it was. Empty: ``[format]`` alone, anything else is an error.
    format_priority: Tuple[str, ...] = ()
    #: ``pipeline_config(accuracy_gate=...)`` as key/value pairs (with ``format_priority``),
    #: e.g. ``(("metric", "topk_agreement"), ("k", 5), ("min", 0.9))``; empty: the default gate.
    accuracy_gate: Tuple[Tuple[str, Any], ...] = ()

    def describe(self) -> Dict[str, Any]:
        out = {"model_instances": self.model_instances or "default",
               "decode_instances": self.decode_instances,
               "num_threads": self.num_threads if self.num_threads else "default",
               "dynamic_batching": self.dynamic_batching or "off", "format": self.format}
        if self.decode_params:
            out["decode_params"] = dict(self.decode_params)
        if self.model_params:
            out["model_params"] = dict(self.model_params)
        if self.server_env:
            out["server_env"] = dict(self.server_env)
        if self.format_priority:
            out["format_priority"] = list(self.format_priority)
        if self.accuracy_gate:
            out["accuracy_gate"] = dict(self.accuracy_gate)
        return out
