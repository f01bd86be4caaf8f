"""The build step: a validated pipeline -> a frozen :class:`BuiltPipeline` that the rest reads.

Config flows one way::

    op params + op_config  ->  Pipeline (validated, operators constructed)
                           ->  build_pipeline(): per step the final params, the chosen model
                               format with its reasons, the model files, the local runner
                           ->  the local runner (local_run.py) and the repository writer
                               (triton/repository.py), which both only read it.

Building a model step loads its weights (pretrained ones through the library's own loader and
the Hugging Face cache; weights that cannot be had fail the build with a ``ConfigError``, never
become random ones), then exports and checks its formats (ONNX export, parity checks, int8
calibration through the steps before it, TensorRT engines): the expensive part, done once per
:class:`~towhee_rt.pipeline.Pipeline`. Nothing changes an operator's params afterwards; a
served copy of the operator is constructed from :attr:`BuiltStep.params` instead, which pin its
weights (``params['lock']``: see :func:`towhee_rt.accel.formats.lock_entry`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from .accel import formats
from .accel.formats import FormatChoice, ModelFile
from .backends.operator_base import OperatorParamError
from .errors import ConfigError, ItemError
from .fingerprint import fingerprint, step_identity
from .local_run import LocalStep, run_local
from .op_config import OpConfig, RequestLimits
from .operator import Operator

log = logging.getLogger("towhee_rt")


@dataclasses.dataclass(frozen=True)
class BuiltStep:
    """One built operator: what to serve and what runs locally."""

    index: int
    #: The registered operator name, e.g. ``'image_embedding.timm'``.
    name: str
    operator_class: Type[Operator]
    #: The params a served copy of the operator is constructed with: the user's params plus,
    #: for a model operator, its ``format``, the names of its model files, ``pretrained=False``
    #: (it never downloads) and its ``lock``.
    params: Mapping[str, Any]
    config: OpConfig
    #: How the model format was chosen (``None`` for operators without a model).
    format: Optional[FormatChoice]
    #: The files the served model directory needs (weights, ONNX file, engine).
    model_files: Tuple[ModelFile, ...]
    #: The in-process operator (with the runner its format checks verified) and its workers.
    local: LocalStep
    #: sha256 of the model's weights as ``weights.safetensors`` (whatever format serves them);
    #: ``None`` for operators without a model.
    weights_sha256: Optional[str] = None

    def identity(self) -> Dict[str, Any]:
        """What this step contributes to the pipeline's fingerprint
        (:func:`towhee_rt.fingerprint.step_identity`)."""
        return step_identity(self.name, self.params,
                             self.format.format if self.format else None, self.weights_sha256)


@dataclasses.dataclass(frozen=True)
class BuiltPipeline:
    """Every step built, in order, and what the served pipeline accepts per request."""

    steps: Tuple[BuiltStep, ...]
    limits: RequestLimits = RequestLimits()

    @functools.cached_property
    def fingerprint(self) -> str:
        """16 hex characters identifying what these steps compute: operators, weights,
        preprocessing, formats (the rule: :mod:`towhee_rt.fingerprint`). The served ensemble
        carries the same value."""
        return fingerprint([step.identity() for step in self.steps])

    def refusals(self) -> Dict[str, str]:
        """Lossy formats the accuracy gate refused, by ``'<index>:<name>'``: the reason with its
        figures (the step then runs the next format of ``format_priority``)."""
        return {f"{s.index}:{s.name}": s.format.refusal() for s in self.steps
                if s.format and s.format.refusal()}

    def summary(self) -> str:
        """One line per model step, its format and why (``FormatChoice.summary``); a refusal by
        the accuracy gate is in capitals in its line."""
        return "\n".join(f"{s.index}:{s.name}: {s.format.summary()}" for s in self.steps
                         if s.format)

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        """Run ``inputs`` in-process; each item's result or its :class:`ItemError`."""
        return run_local([step.local for step in self.steps], inputs)

    def close(self) -> None:
        """Stop the local worker pools (they restart when needed)."""
        for step in self.steps:
            step.local.close()


def build_pipeline(names: Sequence[str], params: Sequence[Mapping[str, Any]],
                   operators: Sequence[Operator], configs: Sequence[OpConfig],
                   limits: RequestLimits = RequestLimits()) -> BuiltPipeline:
    """Build every step in order (a model step may calibrate through the ones before it).

    Raises :class:`ConfigError` when a model's weights cannot be loaded (naming the model, the
    cache searched and the ways out).
    """
    built: List[BuiltStep] = []
    for index, (name, user_params, op, config) in enumerate(
            zip(names, params, operators, configs)):
        local = LocalStep(op, config)
        if not op.is_model:
            built.append(BuiltStep(index, name, type(op), dict(user_params), config, None, (),
                                   local))
            continue
        upstream = [step.local for step in built]
        try:
            op.torch_module()  # the weights first: every format derives from them
            choice, runner = formats.select_format(
                op, config, lambda: _calibration_batches(op, config, upstream))
            served_params, files = formats.model_files(op, choice, user_params)
        except OperatorParamError as exc:
            raise ConfigError(str(exc)) from None
        if runner is not None:
            op.use_runner(runner)
        built.append(BuiltStep(index, name, type(op), served_params, config, choice, files,
                               local, _weights_sha256(op, served_params)))
        log.info("%d:%s built: %s", index, name, choice.summary())
        if choice.refusal():
            log.warning("%d:%s: %s; serving %s instead", index, name, choice.refusal(),
                        choice.format)
    return BuiltPipeline(tuple(built), limits)


def _weights_sha256(op: Operator, served_params: Mapping[str, Any]) -> str:
    """sha256 of ``op``'s weights as ``weights.safetensors``: the locked file's for the torch
    formats (that file), else hashed here (the shipped file is an export)."""
    lock = served_params.get("lock") or {}
    if lock.get("file") == formats.WEIGHTS_FILE and lock.get("sha256"):
        return lock["sha256"]
    return formats.weights_sha256(op)


def _calibration_batches(op: Operator, config: OpConfig,
                         upstream: Sequence[LocalStep]) -> List[Dict[str, Any]]:
    """``config.calibration_data`` run through the ``upstream`` steps and preprocessed into
    model inputs (one batch per sample; failing samples are skipped with a warning)."""
    samples = list(config.calibration_data)
    values = run_local(upstream, samples) if upstream else samples
    batches = []
    for number, value in enumerate(values):
        if isinstance(value, ItemError):
            log.warning("%s: calibration sample %d skipped: %s", op.name, number, value)
            continue
        batches.append(op.preprocess({op.inputs[0].name: [value]}))
    return batches
