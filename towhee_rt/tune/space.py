"""The tuner's search space: one point is every step's serving settings plus the client's load,
read from and written into a repository's ``config.pbtxt`` files.

The knobs are the repository's own (no second mechanism): ``instance_group[0].count``; the
operator param ``num_threads`` inside ``towhee_params`` (only for operators that declare it;
absent means the adapter's default, this instance's share of the cores); dynamic batching as
towhee_rt writes it (parameter ``towhee_merge_requests`` plus the scheduler's
``max_queue_delay_microseconds``); and ``max_batch_size``. The requests in flight are the
client's: the chosen value is recorded in the ensemble's parameter
``towhee_client_concurrency`` (:func:`record_concurrency`), which :class:`towhee_rt.Client`
and ``dc(...).remote()`` use as their default. Every function here is pure: configs in, new
configs out.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from tritonclient.grpc import model_config_pb2 as pb

from ..backends.cpu import cpu_threads_per_instance
from ..client.client import PARAM_CLIENT_CONCURRENCY, served_concurrency
from ..backends.wire import PARAM_MERGE_REQUESTS, PARAM_OPERATOR, PARAM_PARAMS
from ..errors import ConfigError
from ..op_config import DynamicBatching
from ..triton.config import ensemble_max_batch_size, set_batching

#: The values a move steps through (a current value off the ladder moves to its neighbours).
QUEUE_DELAYS_US = (0, 500, 2000, 5000, 10000)
MAX_BATCHES = (2, 4, 8, 16, 32)
CONCURRENCIES = (1, 2, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The serving settings of one operator model (one ensemble step)."""

    instances: int
    #: ONNX Runtime / torch intra-op threads per instance; ``None``: the adapter's default
    #: (the usable cores divided by the instances), or an operator without the knob.
    threads: Optional[int]
    batching: bool
    queue_delay_us: int
    max_batch: int

    def describe(self, threaded: bool = True) -> str:
        """``'2i x 1t, batching 2 ms/16'``: short, for tables and progress lines."""
        text = f"{self.instances}i"
        if threaded:
            text += f" x {self.threads}t" if self.threads else " x auto"
        if self.batching:
            text += f", batching {self.queue_delay_us / 1000:g} ms/{self.max_batch}"
        return text


@dataclasses.dataclass(frozen=True)
class Point:
    """One candidate: every step's settings (in ensemble order) and the requests in flight."""

    steps: Tuple[Tuple[str, StepSettings], ...]
    concurrency: int

    def step(self, name: str) -> StepSettings:
        """The settings of step ``name``."""
        return dict(self.steps)[name]

    def replace_step(self, name: str, **changes) -> "Point":
        """This point with step ``name``'s settings changed."""
        steps = tuple((n, dataclasses.replace(s, **changes) if n == name else s)
                      for n, s in self.steps)
        return dataclasses.replace(self, steps=steps)

    @property
    def total_instances(self) -> int:
        return sum(s.instances for _, s in self.steps)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the report's form)."""
        return {"steps": {n: dataclasses.asdict(s) for n, s in self.steps},
                "concurrency": self.concurrency}


@dataclasses.dataclass(frozen=True)
class ServedPipeline:
    """The served pipeline being tuned: its ensemble and its steps, in order."""

    ensemble: str
    steps: Tuple[str, ...]
    #: Steps whose operator declares ``num_threads``.
    threaded: Tuple[str, ...]

    def short_name(self, step: str) -> str:
        """``pipeline_1_image_embedding_timm`` -> ``image_embedding_timm`` for labels."""
        head = self.ensemble + "_"
        if step.startswith(head) and step[len(head):].split("_", 1)[0].isdigit():
            return step[len(head):].split("_", 1)[1]
        return step

    def label(self, point: Point) -> str:
        """One line naming every step's settings and the concurrency."""
        parts = [f"{self.short_name(n)} {s.describe(n in self.threaded)}" for n, s in point.steps]
        return "; ".join(parts) + f"; {point.concurrency} in flight"


def find_pipeline(configs: Mapping[str, pb.ModelConfig],
                  model: Optional[str] = None) -> ServedPipeline:
    """The ensemble ``model`` (default: the repository's only ensemble) and its steps. Raises
    :class:`ConfigError` when there is none, several and no choice, or a step is missing."""
    ensembles = sorted(n for n, c in configs.items() if c.platform == "ensemble")
    if model is None:
        if len(ensembles) != 1:
            raise ConfigError(f"the repository holds {len(ensembles)} pipelines "
                              f"({', '.join(ensembles) or 'none'}); name the one to tune "
                              "with model='NAME' (--model NAME)")
        model = ensembles[0]
    if model not in ensembles:
        raise ConfigError(f"{model!r} is not a pipeline of this repository; its pipelines "
                          f"(ensembles) are: {', '.join(ensembles) or 'none'}")
    steps = tuple(step.model_name for step in configs[model].ensemble_scheduling.step)
    missing = [s for s in steps if s not in configs]
    if missing:
        raise ConfigError(f"pipeline {model!r} names steps that the repository lacks: "
                          f"{', '.join(missing)}; rebuild it with towhee_rt.build_model_repo")
    return ServedPipeline(model, steps,
                          tuple(s for s in steps if _declares_threads(configs[s])))


def _declares_threads(config: pb.ModelConfig) -> bool:
    """Whether the step's operator takes ``num_threads`` (built-in or registered here)."""
    from ..registry import operator_class

    try:
        name = json.loads(config.parameters[PARAM_OPERATOR].string_value)["name"]
        return any(p.name == "num_threads" for p in operator_class(name).params_spec)
    except (ValueError, KeyError, ImportError, AttributeError, ConfigError):
        return False


def read_point(configs: Mapping[str, pb.ModelConfig], pipeline: ServedPipeline,
               concurrency: int) -> Point:
    """The settings the repository's configs hold now, at ``concurrency`` requests in flight."""
    steps = []
    for name in pipeline.steps:
        config = configs[name]
        params = json.loads(config.parameters[PARAM_PARAMS].string_value or "{}")
        merge = config.parameters[PARAM_MERGE_REQUESTS].string_value == "yes"
        count = config.instance_group[0].count if config.instance_group else 1
        steps.append((name, StepSettings(
            instances=max(1, count), threads=params.get("num_threads"), batching=merge,
            queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
            max_batch=config.max_batch_size)))
    return Point(tuple(steps), concurrency)


def recorded_concurrency(ensemble: pb.ModelConfig) -> Optional[int]:
    """The requests in flight a previous tuning recorded in ``ensemble``'s config (``None``:
    none, or not a usable value), read as the client reads it."""
    parameters = {key: {"string_value": value.string_value}
                  for key, value in ensemble.parameters.items()}
    return served_concurrency({"parameters": parameters}, ensemble.name)


def record_concurrency(ensemble: pb.ModelConfig, concurrency: int) -> pb.ModelConfig:
    """A copy of ``ensemble``'s config recording ``concurrency`` requests in flight (parameter
    ``towhee_client_concurrency``): the default of every :class:`towhee_rt.Client` call and
    ``dc(...).remote()`` on this pipeline that passes no ``concurrency``."""
    out = pb.ModelConfig()
    out.CopyFrom(ensemble)
    out.parameters[PARAM_CLIENT_CONCURRENCY].string_value = str(int(concurrency))
    return out


def apply_point(configs: Mapping[str, pb.ModelConfig], pipeline: ServedPipeline,
                point: Point) -> Dict[str, pb.ModelConfig]:
    """New configs of every step and of the ensemble with ``point``'s settings written in
    (``configs`` are left unchanged). The ensemble's ``max_batch_size`` becomes the smallest
    of its own original value and every step's, as Triton requires."""
    out: Dict[str, pb.ModelConfig] = {}
    for name, settings in point.steps:
        config = pb.ModelConfig()
        config.CopyFrom(configs[name])
        _write_step(config, settings)
        out[name] = config
    ensemble = pb.ModelConfig()
    ensemble.CopyFrom(configs[pipeline.ensemble])
    ensemble.max_batch_size = ensemble_max_batch_size(
        [configs[pipeline.ensemble].max_batch_size] + [s.max_batch for _, s in point.steps])
    out[pipeline.ensemble] = ensemble
    return out


def _write_step(config: pb.ModelConfig, settings: StepSettings) -> None:
    if not config.instance_group:
        config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU)
    config.instance_group[0].count = settings.instances
    params = json.loads(config.parameters[PARAM_PARAMS].string_value or "{}")
    if settings.threads is None:
        params.pop("num_threads", None)
    else:
        params["num_threads"] = settings.threads
    config.parameters[PARAM_PARAMS].string_value = json.dumps(params, sort_keys=True)
    # The user's preferred sizes carry over; a step that did not merge requests has only the
    # one-request-per-execution size (1), which would stop the batching this point turns on.
    merging = config.parameters[PARAM_MERGE_REQUESTS].string_value == "yes"
    preferred = tuple(size for size in config.dynamic_batching.preferred_batch_size
                      if size <= settings.max_batch) if merging else ()
    set_batching(config, settings.max_batch,
                 DynamicBatching(settings.max_batch, preferred, settings.queue_delay_us)
                 if settings.batching else None)


@dataclasses.dataclass(frozen=True)
class Space:
    """Which points may be tried, and the one-knob moves from a point.

    ``max_instances`` bounds the instances of all steps together (they share the cores and
    the memory); ``cores`` bounds threads per instance; ``concurrency`` given fixes the load
    (the latency objective measures at a fixed load) instead of searching it.
    """

    pipeline: ServedPipeline
    cores: int
    max_instances: int
    concurrency: Optional[int] = None

    def allowed(self, point: Point) -> bool:
        """Whether ``point`` keeps within the limits."""
        if point.total_instances > self.max_instances:
            return False
        if self.concurrency is not None and point.concurrency != self.concurrency:
            return False
        return all(1 <= s.instances and (s.threads is None or 1 <= s.threads <= self.cores)
                   for _, s in point.steps)

    def moves(self, point: Point) -> List[Tuple[str, Point]]:
        """(description, neighbour) for every allowed one-knob move from ``point``, the
        heavier knobs first: the last step (usually the model) before the earlier ones,
        instances and threads before batching, the load last."""
        out: List[Tuple[str, Point]] = []
        for name in reversed(self.pipeline.steps):
            out += self._step_moves(point, name)
        if self.concurrency is None:
            for value in _neighbours(CONCURRENCIES, point.concurrency, up_first=True):
                out.append((f"{value} in flight", dataclasses.replace(point, concurrency=value)))
        return [(text, p) for text, p in out if p != point and self.allowed(p)]

    def _step_moves(self, point: Point, name: str) -> List[Tuple[str, Point]]:
        settings, short = point.step(name), self.pipeline.short_name(name)
        out = []
        for value in (settings.instances + 1, settings.instances - 1):
            out.append((f"{short}: {value} instances",
                        point.replace_step(name, instances=value)))
        if name in self.pipeline.threaded:
            current = settings.threads or cpu_threads_per_instance(settings.instances)
            auto = cpu_threads_per_instance(settings.instances)
            for value in (current + 1, current - 1):
                # The adapter's own default is kept as "auto", so one setting has one name.
                out.append((f"{short}: {value} threads", point.replace_step(
                    name, threads=None if value == auto else value)))
        if settings.batching:
            out.append((f"{short}: batching off", point.replace_step(name, batching=False)))
            for value in _neighbours(QUEUE_DELAYS_US, settings.queue_delay_us):
                out.append((f"{short}: queue delay {value / 1000:g} ms",
                            point.replace_step(name, queue_delay_us=value)))
            for value in _neighbours(MAX_BATCHES, settings.max_batch, up_first=True):
                out.append((f"{short}: max batch {value}",
                            point.replace_step(name, max_batch=value)))
        else:
            out.append((f"{short}: batching on", point.replace_step(
                name, batching=True, queue_delay_us=settings.queue_delay_us or QUEUE_DELAYS_US[2])))
        return out


def _neighbours(ladder: Sequence[int], value: int, up_first: bool = False) -> List[int]:
    """The ladder values just above and just below ``value`` (which may be off the ladder)."""
    above = [v for v in ladder if v > value][:1]
    below = [v for v in ladder if v < value][-1:]
    return above + below if up_first else below + above
