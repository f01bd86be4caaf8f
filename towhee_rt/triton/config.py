"""Triton model configs, built through Triton's own protobuf (never by string concatenation).

One small function per config section; :func:`to_pbtxt` and :func:`parse_pbtxt` round-trip a
config so tests can compare against golden files.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from ..backends.deadlines import DEADLINE_TENSOR
from ..backends.operator_base import TensorSpec
from ..backends.wire import (PARAM_FINGERPRINT, PARAM_FORMAT, PARAM_INPUT_KIND, PARAM_MAX_ITEM_BYTES,
                            PARAM_MAX_REQUEST_BYTES, PARAM_MERGE_REQUESTS, PARAM_OPERATOR,
                            PARAM_PARAMS, SHAPES_SUFFIX)
from ..errors import ConfigError
from ..op_config import DynamicBatching, OpConfig, RequestLimits


@dataclasses.dataclass(frozen=True)
class OperatorModel:
    """Everything needed to write one operator's Triton model."""

    model_name: str
    operator: str          # registered name, e.g. "image_embedding.timm"
    module: str            # backend module file (without .py) inside the model directory
    class_name: str
    params: Mapping[str, Any]
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    config: OpConfig
    format: str = ""
    #: Model files (``towhee_rt.accel.formats.ModelFile``) written beside the code.
    files: Tuple[Any, ...] = ()
    #: The request limits this model enforces (the first model of a pipeline only).
    limits: Optional[RequestLimits] = None
    #: Inputs / outputs that travel padded, each with a ``<name>__shapes`` companion tensor.
    shaped_inputs: Tuple[str, ...] = ()
    shaped_outputs: Tuple[str, ...] = ()
    #: Whether the model receives a request's deadline from the step before (every step but
    #: the first) and hands it to the next (every step but the last): ``towhee_deadline``.
    takes_deadline: bool = False
    passes_deadline: bool = False


#: The tensor that carries a request's deadline between steps (``backends/deadlines.py``).
DEADLINE_SPEC = TensorSpec(DEADLINE_TENSOR, "int64", (1,))


def carries_shapes(output: TensorSpec, next_input: TensorSpec) -> bool:
    """Whether a tensor passed between two steps travels padded with its items' shapes: a
    variable-shape array on both sides (a request may hold items of different shapes)."""
    return output.dtype != "bytes" and not output.is_fixed_shape and not next_input.is_fixed_shape


def _shapes_spec(spec: TensorSpec) -> TensorSpec:
    return TensorSpec(spec.name + SHAPES_SUFFIX, "int64", (len(spec.shape),))


def operator_model_config(model: OperatorModel) -> pb.ModelConfig:
    """The Python-backend config of one operator model."""
    config = pb.ModelConfig(name=model.model_name, backend="python")
    for spec in model.inputs:
        _add_tensor(config.input, spec, allow_ragged=not spec.is_fixed_shape)
        if spec.name in model.shaped_inputs:
            _add_tensor(config.input, _shapes_spec(spec))
    for spec in model.outputs:
        _add_tensor(config.output, spec)
        if spec.name in model.shaped_outputs:
            _add_tensor(config.output, _shapes_spec(spec))
    if model.takes_deadline:  # optional: the model still answers a request without it
        _add_tensor(config.input, DEADLINE_SPEC).optional = True
    if model.passes_deadline:
        _add_tensor(config.output, DEADLINE_SPEC)
    _set_instance_group(config, model.config)
    _set_dynamic_batching(config, model.config)
    _set_parameters(config, model)
    return config


def ensemble_config(name: str, models: Sequence[OperatorModel],
                    limits: RequestLimits = RequestLimits(),
                    fingerprint: Optional[str] = None) -> pb.ModelConfig:
    """The ensemble that chains ``models`` in order, output i feeding input i of the next.

    Its parameters tell clients the input kind, the request limits and the pipeline's
    ``fingerprint`` (:attr:`towhee_rt.BuiltPipeline.fingerprint`); Triton ignores them. A
    request's deadline goes from each step that passes it to the next step that takes it
    (``step<i>_towhee_deadline``), so every step drops work its caller has given up on.
    """
    config = pb.ModelConfig(name=name, platform="ensemble",
                            max_batch_size=ensemble_max_batch_size(
                                [m.config.max_batch_size for m in models]))
    config.parameters[PARAM_INPUT_KIND].string_value = models[0].inputs[0].name
    if fingerprint:
        config.parameters[PARAM_FINGERPRINT].string_value = fingerprint
    _set_limits(config, limits)
    for spec in models[0].inputs:
        _add_tensor(config.input, spec)
    input_names = {spec.name for spec in models[0].inputs}
    output_names = [ensemble_output_name(spec.name, input_names) for spec in models[-1].outputs]
    for spec, name in zip(models[-1].outputs, output_names):
        _add_tensor(config.output, dataclasses.replace(spec, name=name))
        if spec.name in models[-1].shaped_outputs:
            _add_tensor(config.output, _shapes_spec(dataclasses.replace(spec, name=name)))
    tensor_names: List[str] = [spec.name for spec in models[0].inputs]
    for index, model in enumerate(models):
        step = config.ensemble_scheduling.step.add(model_name=model.model_name, model_version=-1)
        for spec, source in zip(model.inputs, tensor_names):
            step.input_map[spec.name] = source
            if spec.name in model.shaped_inputs:
                step.input_map[spec.name + SHAPES_SUFFIX] = source + SHAPES_SUFFIX
        if index and model.takes_deadline and models[index - 1].passes_deadline:
            step.input_map[DEADLINE_TENSOR] = f"step{index - 1}_{DEADLINE_TENSOR}"
        if index + 1 < len(models) and model.passes_deadline and models[index + 1].takes_deadline:
            step.output_map[DEADLINE_TENSOR] = f"step{index}_{DEADLINE_TENSOR}"
        last = index == len(models) - 1
        tensor_names = output_names if last else [f"step{index}_{spec.name}"
                                                  for spec in model.outputs]
        for spec, target in zip(model.outputs, tensor_names):
            step.output_map[spec.name] = target
            if spec.name in model.shaped_outputs:
                step.output_map[spec.name + SHAPES_SUFFIX] = target + SHAPES_SUFFIX
    return config


def ensemble_output_name(name: str, input_names) -> str:
    """An ensemble output keeps its operator's name unless an ensemble input already has it."""
    return f"{name}_output" if name in input_names else name


def to_pbtxt(config: pb.ModelConfig) -> str:
    """Serialise a config as Triton's text format."""
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> pb.ModelConfig:
    """Parse a ``config.pbtxt`` (validating every field name and type)."""
    return text_format.Parse(text, pb.ModelConfig())


def read_repository(repository) -> Dict[str, pb.ModelConfig]:
    """Every model's parsed ``config.pbtxt`` in a model repository directory, by model name
    (the directory name). Raises :class:`~towhee_rt.errors.ConfigError` when the directory
    holds no model or a config does not parse."""
    root = Path(repository)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory: give the model repository that "
                          "towhee_rt.build_model_repo(pipe, path) wrote")
    configs = {}
    for path in sorted(root.glob("*/config.pbtxt")):
        try:
            configs[path.parent.name] = parse_pbtxt(path.read_text())
        except text_format.ParseError as exc:
            raise ConfigError(f"{path}: not a valid Triton model config ({exc})") from None
    if not configs:
        raise ConfigError(f"{root} holds no model (no */config.pbtxt): give the model "
                          "repository that towhee_rt wrote")
    return configs


def write_config(repository, name: str, config: pb.ModelConfig) -> None:
    """Write model ``name``'s ``config.pbtxt`` in ``repository`` (the inverse of
    :func:`read_repository` for one model)."""
    (Path(repository) / name / "config.pbtxt").write_text(to_pbtxt(config))


def read_parameters(config: pb.ModelConfig) -> Dict[str, str]:
    """The config's ``parameters`` as a plain dict of strings."""
    return {key: value.string_value for key, value in config.parameters.items()}


def _add_tensor(field, spec: TensorSpec, allow_ragged: bool = False):
    tensor = field.add(name=spec.name, data_type=pb.DataType.Value(spec.triton_type),
                       dims=list(spec.shape) or [1])
    if allow_ragged:
        tensor.allow_ragged_batch = True
    return tensor


def _set_instance_group(config: pb.ModelConfig, op: OpConfig) -> None:
    if op.device_ids:
        config.instance_group.add(count=op.instances, kind=pb.ModelInstanceGroup.KIND_GPU,
                                  gpus=list(op.device_ids))
    else:
        config.instance_group.add(count=op.instances, kind=pb.ModelInstanceGroup.KIND_CPU)


def set_batching(config: pb.ModelConfig, max_batch_size: int,
                 batching: Optional[DynamicBatching]) -> None:
    """Write an operator model's batching: ``max_batch_size``, and with ``batching`` the
    scheduler's queue delay and preferred sizes plus ``towhee_merge_requests`` "yes" (the
    requests handed over together run as one operator batch); without, no delay, preferred
    size 1 and "no": each execution gets one request, so each answer leaves as soon as it is
    computed. (Handing a free instance every queued request, as Triton does without a
    preferred size, ran them one after the other and sent all the answers together at the end:
    requests finished in clusters 0.5 s apart, bench/results/stalls.batch.md.) The builder and
    the tuner both write it."""
    config.max_batch_size = max_batch_size
    scheduler = config.dynamic_batching
    del scheduler.preferred_batch_size[:]
    if batching is not None:
        scheduler.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
        scheduler.preferred_batch_size.extend(batching.preferred_batch_size)
    else:
        scheduler.max_queue_delay_microseconds = 0
        if max_batch_size > 0:
            scheduler.preferred_batch_size.append(1)
    config.parameters[PARAM_MERGE_REQUESTS].string_value = "yes" if batching else "no"


def ensemble_max_batch_size(step_sizes: Sequence[int]) -> int:
    """The ensemble's ``max_batch_size``: Triton wants it no larger than any step's."""
    return min(step_sizes)


def _set_dynamic_batching(config: pb.ModelConfig, op: OpConfig) -> None:
    """Every model gets Triton's dynamic scheduler, for its bounded queue; the requests it
    hands over together are merged into one operator batch only when ``dynamic_batching`` is
    asked for (see :func:`set_batching`)."""
    set_batching(config, op.max_batch_size, op.dynamic_batching)
    scheduler = config.dynamic_batching
    policy = scheduler.default_queue_policy
    policy.timeout_action = pb.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = op.queue_timeout_ms * 1000
    policy.allow_timeout_override = True  # a client's own, shorter deadline wins
    policy.max_queue_size = op.max_queue_size


def _set_parameters(config: pb.ModelConfig, model: OperatorModel) -> None:
    operator = {"name": model.operator, "module": model.module, "class": model.class_name}
    config.parameters[PARAM_OPERATOR].string_value = json.dumps(operator, sort_keys=True)
    config.parameters[PARAM_PARAMS].string_value = json.dumps(dict(model.params),
                                                              sort_keys=True)
    if model.format:
        config.parameters[PARAM_FORMAT].string_value = model.format
    if model.limits:
        _set_limits(config, model.limits)
    if model.config.device_ids:
        # Keep GPU tensors on the GPU between ensemble steps (inputs may then be on either device).
        config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"


def _set_limits(config: pb.ModelConfig, limits: RequestLimits) -> None:
    config.parameters[PARAM_MAX_REQUEST_BYTES].string_value = str(limits.max_request_bytes)
    config.parameters[PARAM_MAX_ITEM_BYTES].string_value = str(limits.max_item_bytes)
