"""The fluent pipeline builder of Towhee's guide and the pipeline it produces.

Example::

    import towhee_rt as towhee
    pipe = (towhee.dummy_input()
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name='test_resnet')
            .as_function())
    vec = pipe('photo.jpg')            # one input -> one result
    vecs = pipe(['a.jpg', 'b.jpg'])    # a list -> a list, in order

``as_function()`` validates (op_config keys, operator params, the chain) and constructs the
operators, which is cheap; :meth:`Pipeline.build` does the expensive part once (see
:mod:`towhee_rt.build`) and is called for you by the first run or ``build_model_repo``.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from . import op_config as cfg
from .accel.formats import FormatChoice
from .backends.operator_base import OperatorParamError
from .build import BuiltPipeline, build_pipeline
from .errors import ConfigError, ItemError, PipelineError, check_error_mode
from .operator import Operator
from .registry import how_to_declare, is_user_operator, namespaces, operator_class
from .results import Results


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """One operator in a pipeline: its registered name, params and validated op_config."""

    name: str
    params: Mapping[str, Any]
    op_values: Mapping[str, Any]


class PipelineBuilder:
    """Immutable builder: every call returns a new builder with one more step or setting."""

    def __init__(self, steps: Tuple[StepSpec, ...] = (),
                 pipeline_values: Optional[Mapping[str, Any]] = None):
        self._steps = steps
        self._pipeline_values = dict(pipeline_values or {})

    def pipeline_config(self, **values: Any) -> "PipelineBuilder":
        """Set ``parallel``, ``chunksize``, ``jit`` or ``format_priority`` for every operator."""
        merged = {**self._pipeline_values, **cfg.validate_pipeline_config(values)}
        return type(self)(self._steps, merged)

    def add_operator(self, name: str, op_config: Optional[Mapping[str, Any]] = None,
                     **params: Any) -> "PipelineBuilder":
        """Append operator ``name`` (e.g. ``'image_embedding.timm'``) with its params."""
        _check_json(name, params)
        _check_params(operator_class(name), params)
        step = StepSpec(name, dict(params), cfg.validate_op_config(op_config, name))
        return type(self)(self._steps + (step,), self._pipeline_values)

    def __getattr__(self, namespace: str) -> "_Namespace":
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        known = namespaces()
        if namespace not in known:
            raise ConfigError(f"unknown operator namespace {namespace!r}; valid namespaces "
                              f"are: {', '.join(known)} (import the module that registers "
                              f"yours with towhee_rt.register)")
        return _Namespace(self, namespace, known[namespace])

    @property
    def steps(self) -> Tuple[StepSpec, ...]:
        return self._steps

    def as_function(self) -> "Pipeline":
        """Validate the chain and return a callable :class:`Pipeline`."""
        return Pipeline(self._steps, self._pipeline_values)


class _Namespace:
    """``builder.image_decode`` -> ``builder.image_decode.cv2_rgb(...)``."""

    def __init__(self, builder: PipelineBuilder, namespace: str, names: List[str]):
        self._builder, self._namespace, self._names = builder, namespace, names

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._names:
            raise ConfigError(f"unknown operator '{self._namespace}.{name}'; operators in "
                              f"{self._namespace!r} are: {', '.join(self._names)}")
        full = f"{self._namespace}.{name}"

        def add(op_config: Optional[Mapping[str, Any]] = None, **params: Any):
            return self._builder.add_operator(full, op_config=op_config, **params)

        add.__name__ = name
        add.__doc__ = f"Append operator {full}."
        return add


class Pipeline:
    """A validated chain of operators, callable locally and buildable into a Triton repo.

    ``pipe(x)`` runs one input and returns its result (raising :class:`ItemError` if it
    fails); ``pipe([x, y])`` returns a list in input order. ``errors='return'`` puts an
    :class:`ItemError` in place of each failed item instead of raising
    :class:`PipelineError` (which carries every item's outcome in ``.results``).
    """

    def __init__(self, steps: Sequence[StepSpec], pipeline_values: Mapping[str, Any]):
        if not steps:
            raise ConfigError("the pipeline has no operators; add one, e.g. "
                              "dummy_input().image_decode.cv2_rgb()")
        self.steps: Tuple[StepSpec, ...] = tuple(steps)
        self.pipeline_values = dict(pipeline_values)
        classes = [operator_class(s.name) for s in self.steps]
        self.configs: Tuple[cfg.OpConfig, ...] = tuple(
            cfg.resolve(self.pipeline_values, s.op_values, s.name, c.is_model)
            for s, c in zip(self.steps, classes))
        _check_chain(self.steps, classes)
        self.limits = cfg.request_limits(self.pipeline_values)
        self.operators: Tuple[Operator, ...] = tuple(
            _construct(c, s.params) for c, s in zip(classes, self.steps))
        self._built: Optional[BuiltPipeline] = None
        self._build_lock = threading.Lock()

    def build(self) -> BuiltPipeline:
        """Choose formats, export and check models (once); return the frozen result."""
        with self._build_lock:
            if self._built is None:
                self._built = build_pipeline([s.name for s in self.steps],
                                             [s.params for s in self.steps],
                                             self.operators, self.configs, self.limits)
            return self._built

    def __call__(self, inputs: Any, errors: str = "raise") -> Any:
        check_error_mode(errors)
        if isinstance(inputs, (list, tuple)):
            return self.batch(inputs, errors=errors)
        result = self.build().run([inputs])[0]
        if isinstance(result, ItemError) and errors == "raise":
            raise result
        return result

    def batch(self, inputs: Sequence[Any], errors: str = "raise") -> Results:
        """Run a list of inputs; see the class docstring for ``errors``. The list returned
        (:class:`~towhee_rt.results.Results`) also holds the inputs and the pipeline's
        :attr:`fingerprint`: ``pipe(paths).to_milvus('photos.db', 'photos')`` indexes them."""
        check_error_mode(errors)
        inputs = list(inputs)
        results = self.build().run(inputs)
        failed = [r for r in results if isinstance(r, ItemError)]
        if failed and errors == "raise":
            raise PipelineError(failed, results)
        return Results(results, inputs, self.fingerprint)

    def formats(self) -> Dict[str, str]:
        """The model format chosen for each model operator, keyed by ``'<index>:<name>'``.

        >>> pipe.formats()   # doctest: +SKIP
        {'1:image_embedding.timm': 'onnx'}
        """
        return {f"{s.index}:{s.name}": s.format.format
                for s in self.build().steps if s.format}

    def model_card(self) -> Dict[str, Dict[str, Any]]:
        """The lock of each model operator, keyed by ``'<index>:<name>'``: where its weights came
        from (``source``: ``'hf-hub'`` with ``repo_id`` and ``revision``, the commit; or
        ``'package'``, ``'local-dir'``, ``'checkpoint'``, ``'random'``), the ``file`` a
        repository ships with its ``sha256``, the ``format`` and the ``preprocess`` config. The
        same entry is in each model's ``config.pbtxt`` (``towhee_params``' ``lock``) and the repository's
        README. Where a lossy format (``onnx_int8``) was tried, ``accuracy_gate`` says the
        gate's verdict: its figures when it passed, ``'onnx_int8 REFUSED by the accuracy
        gate: ...'`` when it served another format instead (not part of the lock: it does not
        change the fingerprint).

        >>> pipe.model_card()['1:image_embedding.timm']['revision']   # doctest: +SKIP
        'a1b2c3...'
        """
        card = {}
        for step in self.build().steps:
            if not (step.format and step.params.get("lock")):
                continue
            entry = json.loads(json.dumps(step.params["lock"]))
            verdict = step.format.refusal() or step.format.gate
            if verdict:
                entry["accuracy_gate"] = verdict
            card[f"{step.index}:{step.name}"] = entry
        return card

    @property
    def fingerprint(self) -> str:
        """16 hex characters identifying the vectors this pipeline computes: its operators,
        their weights (sha256), preprocessing and model formats; builds the pipeline on first
        use. The repository ``build_model_repo`` writes serves the same value
        (:attr:`towhee_rt.Client.fingerprint`); rebuilding the same pipeline keeps it, other
        weights or preprocessing change it (the rule: :mod:`towhee_rt.fingerprint`).

        >>> pipe.fingerprint   # doctest: +SKIP
        '5d0c2f7a91b3e4c8'
        """
        return self.build().fingerprint

    def format_choice(self, index: int) -> Optional[FormatChoice]:
        """How operator ``index``'s format was chosen (``None`` for operators without a model)."""
        return self.build().steps[index].format

    @property
    def input_specs(self):
        """The pipeline's inputs: the first operator's input specs."""
        return list(self.operators[0].inputs)

    @property
    def output_specs(self):
        """The pipeline's outputs: the last operator's output specs."""
        return list(self.operators[-1].outputs)

    def close(self) -> None:
        """Stop the local worker pools (the built models are kept)."""
        if self._built is not None:
            self._built.close()

    def __repr__(self) -> str:
        chain = " -> ".join(f"{s.name}({dict(s.params)})" for s in self.steps)
        return f"Pipeline({chain})"


def dummy_input() -> PipelineBuilder:
    """Start a pipeline, as in Towhee's guide: ``dummy_input().image_decode.cv2_rgb()...``."""
    return PipelineBuilder()


def _check_json(name: str, params: Mapping[str, Any]) -> None:
    try:
        json.dumps(params)
    except TypeError as exc:
        raise ConfigError(f"{name}: params must be JSON-serialisable (they are stored in the "
                          f"Triton model config): {exc}") from None


def _check_params(cls: Type[Operator], params: Mapping[str, Any]) -> None:
    try:
        cls.check_params(params)
    except OperatorParamError as exc:
        undeclared = [k for k in params if k not in {p.name for p in cls.params_spec}]
        if undeclared and is_user_operator(cls):  # the user can declare it: say how
            hint = how_to_declare(cls, undeclared[0], params[undeclared[0]])
            raise ConfigError(f"{exc}; {hint}") from None
        raise ConfigError(str(exc)) from None


def _construct(cls: Type[Operator], params: Mapping[str, Any]) -> Operator:
    """The in-process operator: one that reads locations (paths, URLs) is told it runs in the
    user's own process, where that is the user's right (a served copy treats items as data)."""
    if any(p.name == "in_process" for p in cls.params_spec):
        params = {**params, "in_process": True}
    try:
        return cls(**params)
    except OperatorParamError as exc:
        raise ConfigError(str(exc)) from None


def _check_chain(steps: Sequence[StepSpec], classes: Sequence[type]) -> None:
    """Each operator's outputs must feed the next one's inputs, position by position."""
    for (a, ca), (b, cb) in zip(zip(steps, classes), zip(steps[1:], classes[1:])):
        outs, ins = ca.outputs, cb.inputs
        if len(outs) != len(ins) or any(o.dtype != i.dtype for o, i in zip(outs, ins)):
            raise ConfigError(
                f"{a.name} cannot feed {b.name}: it outputs "
                f"{[(o.name, o.dtype) for o in outs]} but {b.name} expects "
                f"{[(i.name, i.dtype) for i in ins]}")
