"""The one operator abstraction shared by the local runner and the Triton adapter.

This module depends on numpy only and uses no absolute import of ``towhee_rt``: it is copied
verbatim into every model directory of a generated Triton repository, next to the operator
module that subclasses it, so the repository runs without towhee_rt installed.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: dtypes an operator may declare, with the Triton type each becomes.
TRITON_TYPES = {
    "bytes": "TYPE_STRING",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output of an operator, per item (without the batch dimension).

    ``shape`` uses -1 for a dimension that varies between items, e.g. ``(-1, -1, 3)`` for an
    RGB image; ``()`` is a scalar per item (a string, an encoded image).
    """

    name: str
    dtype: str
    shape: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.dtype not in TRITON_TYPES:
            raise ValueError(
                f"TensorSpec {self.name!r}: dtype {self.dtype!r} is not supported; "
                f"choose one of {sorted(TRITON_TYPES)}")

    @property
    def triton_type(self) -> str:
        return TRITON_TYPES[self.dtype]

    @property
    def is_fixed_shape(self) -> bool:
        return all(d >= 0 for d in self.shape)


class OperatorInputError(ValueError):
    """An input item that an operator cannot process (bad image, wrong type, too large).

    Raised by an operator for the item it is processing; the runner (local or Triton) adds the
    operator name and the item's index in the caller's batch.
    """


class Operator:
    """Base class of every operator: batch in, batch out.

    Subclasses declare ``inputs`` and ``outputs`` (lists of :class:`TensorSpec`), keep
    ``__init__`` cheap (store JSON-serialisable params only), load weights in :meth:`setup`,
    and implement :meth:`process_batch`, which maps ``{input name: list of items}`` to
    ``{output name: list of items}`` with one output item per input item, in order.

    Example::

        class Upper(Operator):
            inputs = [TensorSpec("text", "bytes")]
            outputs = [TensorSpec("text", "bytes")]

            def process_batch(self, batch):
                return {"text": [t.upper() for t in batch["text"]]}
    """

    #: The registered name, e.g. ``"image_decode.cv2_rgb"``; set by the registry.
    name: ClassVar[str] = ""
    inputs: ClassVar[List[TensorSpec]] = []
    outputs: ClassVar[List[TensorSpec]] = []
    #: Whether the operator runs a neural model (and so takes ``format_priority`` and ``jit``).
    is_model: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.params: Dict[str, Any] = dict(params)
        self.device: str = "cpu"
        self._ready = False

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Load weights and allocate resources for ``device`` (``"cpu"`` or ``"cuda:N"``)."""
        self.device = device

    def ensure_setup(self, device: Optional[str] = None) -> None:
        """Call :meth:`setup` once."""
        if not self._ready:
            self.setup(device or self.device)
            self._ready = True

    # -- work --------------------------------------------------------------------------------
    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        """Process one batch; must be overridden."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_batch")

    def __call__(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        self.ensure_setup()
        return self.process_batch(batch)

    # -- helpers for subclasses -----------------------------------------------------------
    @property
    def artifact_dir(self) -> Optional[str]:
        """Directory holding this operator's model files (set inside a Triton model directory)."""
        return self.params.get("artifact_dir")

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "artifact_dir"}
        return f"{self.name or type(self).__name__}({shown})"


def cpu_threads_per_instance(instances: int = 1) -> int:
    """Threads one model instance may use so that ``instances`` of them fit the machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, instances))


def stack_items(items: Sequence[Any], spec: TensorSpec) -> np.ndarray:
    """Stack per-item values into one batch array of ``spec``'s dtype (bytes -> np.object_)."""
    if spec.dtype == "bytes":
        out = np.empty(len(items), dtype=np.object_)
        for i, item in enumerate(items):
            out[i] = item.encode() if isinstance(item, str) else bytes(item)
        return out
    return np.stack([np.asarray(item, dtype=spec.dtype) for item in items])


def describe_error(exc: BaseException) -> str:
    """A one-line message for an item's failure (exception type kept for unexpected errors)."""
    if isinstance(exc, OperatorInputError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def process_items(op: Operator, items: Sequence[Tuple[Any, ...]]) -> List[Any]:
    """Run ``op`` on ``items`` (each a tuple of input values ordered like ``op.inputs``).

    Returns one entry per item, in order: a tuple of output values ordered like
    ``op.outputs``, or the exception that item raised. The whole batch runs in one call; if
    that call raises, each item is retried alone so one bad item cannot fail the others.
    """
    if not items:
        return []
    try:
        return _run(op, items)
    except Exception as exc:  # noqa: BLE001 - isolated below, per item
        if len(items) == 1:
            return [exc]
    return [_single(op, item) for item in items]


def _run(op: Operator, items: Sequence[Tuple[Any, ...]]) -> List[Tuple[Any, ...]]:
    batch = {spec.name: [item[i] for item in items] for i, spec in enumerate(op.inputs)}
    out = op(batch)
    columns = [out[spec.name] for spec in op.outputs]
    for spec, column in zip(op.outputs, columns):
        if len(column) != len(items):
            raise RuntimeError(f"{op.name}: output {spec.name!r} has {len(column)} items "
                               f"for {len(items)} inputs")
    return list(zip(*columns))


def _single(op: Operator, item: Tuple[Any, ...]) -> Any:
    try:
        return _run(op, [item])[0]
    except Exception as exc:  # noqa: BLE001 - reported per item
        return exc

