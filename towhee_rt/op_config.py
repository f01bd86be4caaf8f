"""Pipeline and operator configuration: the seed's keys, validated at build time.

``pipeline_config(...)`` sets defaults for every operator; ``op_config={...}`` on one operator
overrides them. Everything is checked when the pipeline is built, with messages that list the
valid choices.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from .accel.accuracy_gate import AccuracyGate, parse as _accuracy_gate
from .backends.cpu import usable_cores
from .backends.wire import DEFAULT_MAX_ITEM_BYTES
from .errors import ConfigError

#: Model formats ``format_priority`` may name, best first when the hardware allows.
FORMATS = ("tensorrt", "tensorrt_fp16", "onnx_int8", "onnx", "torch")
#: ``jit`` values: ``'towhee'`` (the seed's name) maps to the best available, torch.compile here.
JIT_CHOICES = ("towhee", "torch")
DYNAMIC_BATCHING_KEYS = ("max_batch_size", "preferred_batch_size", "max_queue_delay_microseconds")

DEFAULT_CHUNKSIZE = 8
#: What one request (all its items) and one item may weigh on the wire, by default: a served
#: pipeline refuses more before decoding anything, and towhee_rt's client before sending.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_QUEUE_DELAY_US = 2000
#: Each model's queue: at most this many requests wait, each at most this long, then Triton
#: rejects them ("server busy") instead of letting latency grow without bound.
DEFAULT_MAX_QUEUE_SIZE = 64
DEFAULT_QUEUE_TIMEOUT_MS = 5000


def default_cpu_model_instances(cores: Optional[int] = None) -> int:
    """Triton instances of a CPU model operator when neither instance_count nor parallel is
    given, for a machine with ``cores`` (default: the cores this process may use).

    Measured on 2 cores: two single-threaded instances beat one two-threaded instance
    (bench/results: resnet50 22.9 vs 19.7 img/s, CLIP 17.8 vs 15.4, MiniLM 208 vs 170 items/s
    served). Larger machines get one instance per 4 cores (each then runs 4 intra-op threads,
    see the adapter), a heuristic not yet measured there. The count is written into the
    repository; the threads per instance are decided on the serving machine.
    """
    cores = usable_cores() if cores is None else cores
    return max(min(cores, 2), cores // 4)


@dataclasses.dataclass(frozen=True)
class DynamicBatching:
    """Triton dynamic batching for one operator's model."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    preferred_batch_size: Tuple[int, ...] = ()
    max_queue_delay_microseconds: int = DEFAULT_QUEUE_DELAY_US


@dataclasses.dataclass(frozen=True)
class OpConfig:
    """The resolved configuration of one operator (pipeline defaults + its op_config)."""

    parallel: int = 1
    chunksize: int = DEFAULT_CHUNKSIZE
    jit: Optional[str] = None
    format_priority: Tuple[str, ...] = ()
    dynamic_batching: Optional[DynamicBatching] = None
    device_ids: Tuple[int, ...] = ()
    instance_count: Optional[int] = None
    calibration_data: Tuple[Any, ...] = ()
    int8_min_cosine: float = 0.99
    #: How lossy formats (int8) are judged; ``None``: min cosine ``int8_min_cosine``.
    accuracy_gate: Optional[AccuracyGate] = None
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    queue_timeout_ms: int = DEFAULT_QUEUE_TIMEOUT_MS

    @property
    def gate(self) -> AccuracyGate:
        """The accuracy gate in force: ``accuracy_gate``, else min cosine ``int8_min_cosine``."""
        return self.accuracy_gate or AccuracyGate("min_cosine", self.int8_min_cosine)

    @property
    def instances(self) -> int:
        """Triton instance count: ``instance_count``, else the pipeline's ``parallel``."""
        return self.instance_count or self.parallel

    @property
    def max_batch_size(self) -> int:
        """The model's max batch size: the dynamic batching limit, else the default."""
        return self.dynamic_batching.max_batch_size if self.dynamic_batching else \
            DEFAULT_MAX_BATCH_SIZE

    @property
    def device(self) -> str:
        """The device the operator runs on locally: the first of ``device_ids``, else CPU."""
        return f"cuda:{self.device_ids[0]}" if self.device_ids else "cpu"


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What a served pipeline accepts per request and per item (bytes on the wire)."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES


def request_limits(pipeline_values: Mapping[str, Any]) -> RequestLimits:
    """The :class:`RequestLimits` set by ``pipeline_config`` (defaults for the others)."""
    given = {k: v for k, v in pipeline_values.items()
             if k in {f.name for f in dataclasses.fields(RequestLimits)}}
    limits = RequestLimits(**given)
    if limits.max_item_bytes > limits.max_request_bytes:
        raise ConfigError(f"pipeline_config: max_item_bytes ({limits.max_item_bytes:,}) exceeds "
                          f"max_request_bytes ({limits.max_request_bytes:,}); lower "
                          f"max_item_bytes or raise max_request_bytes (a request holds one "
                          f"item or more)")
    return limits


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One key of ``pipeline_config`` / ``op_config``: its check and where it applies."""

    name: str
    check: Callable[[Any, str], Any]
    #: Where the key may be set: ``'both'``, ``'op'`` (op_config only) or ``'pipeline'``
    #: (pipeline_config only: it applies to the pipeline as a whole).
    scope: str = "both"
    #: Applies to model operators only (image_embedding.*, image_text_embedding.*, ...).
    model_only: bool = False


def validate_pipeline_config(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Check ``pipeline_config(**values)`` and return the normalised values."""
    return _validate(values, PIPELINE_KEYS, "pipeline_config")


def validate_op_config(values: Optional[Mapping[str, Any]], operator: str) -> Dict[str, Any]:
    """Check one operator's ``op_config`` and return the normalised values."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{operator}: op_config must be a dict, got {type(values).__name__}")
    return _validate(values, OP_KEYS, f"{operator}: op_config", operator)


def resolve(pipeline_values: Mapping[str, Any], op_values: Mapping[str, Any],
            operator: str, is_model: bool) -> OpConfig:
    """Merge pipeline defaults with one operator's overrides into an :class:`OpConfig`."""
    for key in MODEL_ONLY_KEYS:
        if op_values.get(key) and not is_model:
            raise ConfigError(f"{operator}: op_config key {key!r} only applies to model "
                              "operators (image_embedding.*, image_text_embedding.*, "
                              "text_embedding.*); remove it from this operator")
    merged = {k: v for k, v in {**pipeline_values, **op_values}.items() if k in OP_KEYS}
    if merged.get("accuracy_gate") is not None and "int8_min_cosine" in merged:
        raise ConfigError(f"{operator}: int8_min_cosine and accuracy_gate are both set; "
                          "int8_min_cosine=x is short for accuracy_gate={'metric': "
                          "'min_cosine', 'min': x}: set one of them")
    if is_model and not ({"instance_count", "parallel", "device_ids"} & set(merged)):
        merged["instance_count"] = default_cpu_model_instances()
    if not is_model:
        for key in MODEL_ONLY_KEYS:
            merged.pop(key, None)
    return OpConfig(**merged)


def _elsewhere(unknown: Sequence[str], operator: Optional[str]) -> str:
    """Where the unknown keys belong: the other scope's keys there, anything else (in an
    op_config) as an operator param."""
    if operator is None:  # pipeline_config
        ops = [k for k in unknown if k in OP_KEYS]
        return (f" ({', '.join(map(repr, ops))}: set per operator, "
                f".<namespace>.<operator>(op_config={{{ops[0]!r}: ...}}))" if ops else "")
    pipeline = [k for k in unknown if k in PIPELINE_KEYS]
    if pipeline:
        return (f" ({', '.join(map(repr, pipeline))}: set for the whole pipeline, "
                f"pipeline_config({pipeline[0]}=...))")
    return (f"; an operator param is a keyword argument of the operator itself, "
            f".{operator}({unknown[0]}=...)")


def _validate(values: Mapping[str, Any], allowed: Tuple[str, ...], where: str,
              operator: Optional[str] = None) -> Dict[str, Any]:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys are: {', '.join(allowed)}{_elsewhere(unknown, operator)}")
    out: Dict[str, Any] = {}
    for key, value in values.items():
        out[key] = KEYS[key].check(value, f"{where}[{key!r}]")
    return out


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def _jit(value: Any, where: str) -> Optional[str]:
    if value is None or value is False:
        return None
    if value not in JIT_CHOICES:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, JIT_CHOICES))} or "
                          f"None, got {value!r}")
    return value


def _format_priority(value: Any, where: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where} must be a non-empty list of formats from "
                          f"{', '.join(FORMATS)}, got {value!r}")
    bad = [v for v in value if v not in FORMATS]
    if bad:
        raise ConfigError(f"{where}: unknown format(s) {', '.join(map(repr, bad))}; "
                          f"valid formats are: {', '.join(FORMATS)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} lists a format twice: {list(value)!r}; list each format "
                          f"once, in the order to try them")
    return tuple(value)


def _device_ids(value: Any, where: str) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ConfigError(f"{where} must be a list of GPU indices such as [0] or [0, 1], "
                          f"got {value!r}")
    return tuple(value)


def _dynamic_batching(value: Any, where: str) -> Optional[DynamicBatching]:
    if value is None or value is False:
        return None
    if value is True:
        return DynamicBatching()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be True, False or a dict with keys "
                          f"{', '.join(DYNAMIC_BATCHING_KEYS)}, got {value!r}")
    unknown = sorted(set(value) - set(DYNAMIC_BATCHING_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys are: {', '.join(DYNAMIC_BATCHING_KEYS)}")
    max_batch = _positive_int(value.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
                              f"{where}['max_batch_size']")
    preferred: Union[int, list] = value.get("preferred_batch_size", [])
    preferred = [preferred] if isinstance(preferred, int) else list(preferred)
    for size in preferred:
        _positive_int(size, f"{where}['preferred_batch_size']")
        if size > max_batch:
            raise ConfigError(f"{where}: preferred_batch_size {size} exceeds max_batch_size "
                              f"{max_batch}; lower it or raise max_batch_size")
    delay = value.get("max_queue_delay_microseconds", DEFAULT_QUEUE_DELAY_US)
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ConfigError(f"{where}['max_queue_delay_microseconds'] must be an integer >= 0, "
                          f"got {delay!r}")
    return DynamicBatching(max_batch, tuple(preferred), delay)


def _calibration_data(value: Any, where: str) -> Tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list of pipeline inputs (paths, URLs, bytes or "
                          f"strings), got {type(value).__name__}")
    return tuple(value)


def _unit_interval(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{where} must be a number in (0, 1], got {value!r}")
    return float(value)


#: Every config key, in the order error messages list them; OpConfig has one field per key.
KEYS: Dict[str, ConfigKey] = {key.name: key for key in (
    ConfigKey("parallel", _positive_int),
    ConfigKey("chunksize", _positive_int),
    ConfigKey("jit", _jit, model_only=True),
    ConfigKey("format_priority", _format_priority, model_only=True),
    ConfigKey("calibration_data", _calibration_data, model_only=True),
    ConfigKey("int8_min_cosine", _unit_interval, model_only=True),
    ConfigKey("accuracy_gate", _accuracy_gate, model_only=True),
    ConfigKey("max_queue_size", _positive_int),
    ConfigKey("queue_timeout_ms", _positive_int),
    ConfigKey("max_request_bytes", _positive_int, scope="pipeline"),
    ConfigKey("max_item_bytes", _positive_int, scope="pipeline"),
    ConfigKey("dynamic_batching", _dynamic_batching, scope="op"),
    ConfigKey("device_ids", _device_ids, scope="op"),
    ConfigKey("instance_count", _positive_int, scope="op"),
)}
PIPELINE_KEYS = tuple(k for k, key in KEYS.items() if key.scope in ("both", "pipeline"))
OP_KEYS = tuple(k for k, key in KEYS.items() if key.scope in ("both", "op"))
MODEL_ONLY_KEYS = tuple(k for k, key in KEYS.items() if key.model_only)
