# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""The one operator abstraction shared by the local runner and the Triton adapter: the
:class:`Operator` base class, its :class:`TensorSpec` inputs and outputs, its declared
:class:`Param` s, and the errors an operator raises for one item or for its params.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

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


# -- errors ------------------------------------------------------------------------------------
class OperatorInputError(ValueError):
    """An input item that an operator cannot process (bad image, wrong type).

    Raised by an operator for the item it is processing; the runner (local or Triton) adds the
    operator name and the item's index. ``source`` names what the item was when that helps the
    user (a path, a URL, ``<encoded image, N bytes>``); the message says what is wrong and what
    was expected.
    """

    kind = "bad_input"

    def __init__(self, message: str, source: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.message}" if self.source else self.message


class OperatorLimitError(OperatorInputError):
    """An input item over one of the operator's limits (pixels, bytes, time)."""

    kind = "limit"


class OperatorParamError(ValueError):
    """An operator param is unknown, missing, or of the wrong type or value."""


# -- params -----------------------------------------------------------------------------------
REQUIRED = object()
_TYPE_NAMES = {int: "int", float: "number", str: "str", bool: "bool", list: "list",
               dict: "dict", type(None): "None"}


@dataclasses.dataclass(frozen=True)
class Param:
    """One param an operator declares: its name, JSON types, default and what is valid.

    ``check(value)`` returns an error text (what is expected) or ``None`` when valid; it is
    not called for ``None``. ``internal`` params are set by towhee_rt's build or by the Triton
    adapter, never by users.
    """

    name: str
    types: Tuple[type, ...]
    default: Any = REQUIRED
    doc: str = ""
    check: Optional[Callable[[Any], Optional[str]]] = None
    internal: bool = False

    def type_text(self) -> str:
        """``'int or None'``: the JSON types the param takes."""
        types = self.types + ((type(None),) if self.default is None else ())
        if float in types:  # "number" covers int
            types = tuple(t for t in types if t is not int)
        return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)

    def describe(self) -> str:
        """``max_pixels (int, default 16777216)``."""
        default = "required" if self.default is REQUIRED else f"default {self.default!r}"
        return f"{self.name} ({self.type_text()}, {default})"

    def validate(self, value: Any, where: str) -> None:
        """Raise :class:`OperatorParamError` unless ``value`` is valid for this param."""
        if value is None and (self.default is None or type(None) in self.types):
            return
        ok = isinstance(value, self.types) and not (
            isinstance(value, bool) and bool not in self.types)
        problem = None if ok else f"must be {self.type_text()}"
        if problem is None and self.check is not None:
            problem = self.check(value)
        if problem:
            raise OperatorParamError(f"{where}: param {self.name!r} {problem}, got {value!r}")


def positive(value: Any) -> Optional[str]:
    """A :class:`Param` check: the number must be > 0."""
    return None if value > 0 else "must be positive"


# -- the operator ------------------------------------------------------------------------------
class Operator:
    """Base class of every operator: batch in, batch out.

    Subclasses set ``name`` (the registered name), declare ``inputs`` and ``outputs`` (lists
    of :class:`TensorSpec`) and their ``params`` (a tuple of :class:`Param`), keep ``__init__``
    cheap (params are checked and stored in ``self.params``, defaults filled in), load weights
    in :meth:`setup`, and implement :meth:`process_batch`, which maps ``{input name: list of
    items}`` to ``{output name: list of items}`` with one output item per input item, in order.

    Example::

        class Upper(Operator):
            name = "text.upper"
            inputs = [TensorSpec("text", "bytes")]
            outputs = [TensorSpec("text", "bytes")]

            def process_batch(self, batch):
                return {"text": [t.upper() for t in batch["text"]]}
    """

    #: The registered name, e.g. ``"image_decode.cv2_rgb"``.
    name: ClassVar[str] = ""
    inputs: ClassVar[List[TensorSpec]] = []
    outputs: ClassVar[List[TensorSpec]] = []
    #: The params this operator takes (see :class:`Param`); subclasses extend the tuple.
    params_spec: ClassVar[Tuple[Param, ...]] = (
        Param("artifact_dir", (str,), None, "the model directory inside Triton", internal=True),
    )
    #: Whether the operator runs a neural model (and so takes ``format_priority`` and ``jit``).
    is_model: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.params: Dict[str, Any] = self.check_params(params, allow_internal=True)
        self.device: str = "cpu"
        self._ready = False

    @classmethod
    def check_params(cls, params: Mapping[str, Any],
                     allow_internal: bool = False) -> Dict[str, Any]:
        """Check ``params`` against :attr:`params_spec`; return them with defaults filled in.

        Raises :class:`OperatorParamError` naming the operator and listing the valid params.
        """
        where = cls.name or cls.__name__
        spec = {p.name: p for p in cls.params_spec}
        users = [p for p in cls.params_spec if not p.internal]
        unknown = sorted(set(params) - set(spec))
        internal = sorted(k for k in params if k in spec and spec[k].internal)
        if unknown or (internal and not allow_internal):
            valid = ", ".join(p.describe() for p in users) or "none"
            bad = ", ".join(map(repr, unknown or internal))
            why = "unknown param(s)" if unknown else "param(s) set by towhee_rt itself"
            raise OperatorParamError(f"{where}: {why} {bad}; valid params are: {valid}")
        out = {}
        for p in cls.params_spec:
            if p.name in params:
                p.validate(params[p.name], where)
                out[p.name] = params[p.name]
            elif p.default is REQUIRED:
                raise OperatorParamError(f"{where}: the param {p.name!r} is required ({p.doc})")
            else:
                out[p.name] = p.default
        return out

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Load weights and allocate resources for ``device`` (``"cpu"`` or ``"cuda:N"``)."""
        self.device = device

    def ensure_setup(self, device: Optional[str] = None) -> None:
        """Call :meth:`setup` once."""
        if not self._ready:
            self.setup(device or self.device)
            self._ready = True

    def is_ready(self) -> bool:
        """Whether this operator can serve now: set up, by default. An operator that can lose
        what it needs while serving (a device, a runtime session) overrides it; served, it is
        the model's readiness on Triton releases that ask for it (26.03+)."""
        return self._ready

    # -- work --------------------------------------------------------------------------------
    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        """Process one batch; must be overridden."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_batch")

    def __call__(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        self.ensure_setup()
        return self.process_batch(batch)

    def warmup_items(self) -> List[Tuple[Any, ...]]:
        """Sample items (tuples ordered like ``inputs``) that a served model runs once while it
        loads, so its first real request is as fast as the next ones. The default makes one
        from the input specs (``"warm up"`` for bytes, a mid-grey 224-pixel array for arrays);
        operators whose inputs need more (an encoded image) override it."""
        def sample(spec: TensorSpec) -> Any:
            if spec.dtype == "bytes":
                return b"warm up"
            return np.full([224 if d < 0 else d for d in spec.shape], 128, dtype=spec.dtype)

        return [tuple(sample(spec) for spec in self.inputs)]

    # -- helpers for subclasses -----------------------------------------------------------
    @property
    def artifact_dir(self) -> Optional[str]:
        """Directory holding this operator's model files (set inside a Triton model directory)."""
        return self.params.get("artifact_dir")

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "artifact_dir"}
        return f"{self.name or type(self).__name__}({shown})"
