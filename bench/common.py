"""Shared pieces of the benchmarks: inputs, the three pipelines, timing, machine description.

Everything here is used by ``bench/run.py`` (the one-command comparison) and by the
pytest-benchmark suites (``bench/test_bench_*.py``), so both measure the same things.

The image models (timm resnet50, open_clip ViT-B/32) have random weights (``pretrained=False``,
seeded): no model hub is reachable where the benchmarks run, and speed does not depend on the
weights' values. Accuracy figures of image models (int8 cosines) are therefore measured on
random-weight models; MiniLM has its real weights, and so has ``lite0``: EfficientNet-Lite0
with its ImageNet weights (``bench/real_weights.py``, through ``checkpoint_path``; issue 20).
"""
from __future__ import annotations

import dataclasses
import datetime
import platform
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from towhee_rt.backends.cpu import usable_cores
from towhee_rt.tune.machine import cpu_model, package_version

if TYPE_CHECKING:
    from towhee_rt.client import RequestRecord

ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = ROOT.parent / "shared" / "testdata" / "images" / "good"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PIPELINES = ("resnet50", "clip", "minilm", "lite0")

#: Sentences of mixed length (3 to ~110 words) for the text pipeline; 'decode' is tokenisation.
SENTENCES = [
    "Triton serves embeddings.",
    "A cat sleeps on the warm windowsill.",
    "How do I reset my password?",
    "Vector databases index embeddings for fast nearest-neighbour search over millions of items.",
    "The quarterly report shows revenue growth of twelve percent, driven mainly by subscription "
    "renewals in the European market and a strong launch of the new mobile application.",
    "OK.",
    "Sentence embeddings map text of any length to a fixed-size vector.",
    "Please find attached the signed contract; let me know if anything is missing before Friday.",
    "The mitochondria is the powerhouse of the cell, producing most of the chemical energy needed "
    "to power the biochemical reactions of the cell, stored in adenosine triphosphate.",
    "Where is the nearest train station?",
    "In 1969 the Apollo 11 mission landed the first humans on the Moon, and Neil Armstrong "
    "stepped onto the lunar surface six hours after landing, describing it as one small step "
    "for a man and one giant leap for mankind, while Michael Collins orbited above in the "
    "command module Columbia, waiting for his two crewmates to return from the Sea of "
    "Tranquility with samples of rock and soil that scientists would study for decades.",
    "Dynamic batching groups concurrent requests into one model call.",
    "Red sky at night, sailor's delight.",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and a little milk.",
    "Error 503: the service is temporarily unavailable, please retry later.",
    "Machine learning models trained on large corpora of text can capture surprisingly subtle "
    "semantic relationships between words, phrases and whole documents, which makes them "
    "useful for search, clustering, deduplication and recommendation systems.",
]


# ---------------------------------------------------------------------------------- inputs
def image_files() -> List[Path]:
    """The shared good test images (jpg, png, webp), sorted."""
    files = sorted(p for p in IMAGES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no test images in {IMAGES_DIR}")
    return files


def image_bytes() -> List[bytes]:
    """The test images as encoded bytes (what a client sends)."""
    return [p.read_bytes() for p in image_files()]


def base_items(pipeline: str) -> List[Any]:
    """One round of inputs for ``pipeline``: encoded images, or sentences."""
    return list(SENTENCES) if pipeline == "minilm" else image_bytes()


def items_for(pipeline: str, count: int) -> List[Any]:
    """``count`` inputs for ``pipeline``, cycling through the base items."""
    base = base_items(pipeline)
    return [base[i % len(base)] for i in range(count)]


# -------------------------------------------------------------------------------- pipelines
def add_operators(builder, pipeline: str, decode_config: Optional[dict] = None,
                  model_config: Optional[dict] = None, decode_params: Optional[dict] = None,
                  **model_params):
    """Append ``pipeline``'s operators to a towhee_rt builder (decode op only for images)."""
    if pipeline == "minilm":
        return builder.text_embedding.sentence_transformers(op_config=model_config,
                                                            **model_params)
    builder = builder.image_decode.cv2_rgb(op_config=decode_config, **(decode_params or {}))
    # Random weights, explicitly: no hub here, and speed does not depend on them (docstring).
    model_params.setdefault("pretrained", False)
    if pipeline == "resnet50":
        return builder.image_embedding.timm(model_name="resnet50", op_config=model_config,
                                            **model_params)
    if pipeline == "lite0":  # real ImageNet weights, loaded as a user's weights file
        from . import real_weights

        return builder.image_embedding.timm(
            model_name=real_weights.architecture("lite0"), op_config=model_config,
            checkpoint_path=str(real_weights.checkpoint("lite0")), **model_params)
    if pipeline == "clip":
        return builder.image_text_embedding.clip_image(model_name="clip_vit_base_patch32",
                                                       op_config=model_config, **model_params)
    raise ValueError(f"unknown pipeline {pipeline!r}; choose from {PIPELINES}")


def calibration_items(pipeline: str) -> List[Any]:
    """``calibration_data`` for ``onnx_int8``: one round of the benchmark's own inputs.

    towhee_rt holds every third sample out for the accuracy gate. The throughput figures do
    not depend on which samples calibrate; the accuracy figures in the results come from the
    gate's held-out samples and, for MiniLM, from sentences outside this list.
    """
    return base_items(pipeline)


def build_pipeline(pipeline: str, fmt: str = "torch", decode_config: Optional[dict] = None,
                   model_config: Optional[dict] = None, decode_params: Optional[dict] = None,
                   **model_params):
    """A towhee_rt ``Pipeline`` for ``pipeline`` with the torch format or ``format_priority=[fmt]``.

    ``onnx_int8`` is calibrated on :func:`calibration_items`. When a format fails (e.g. the
    accuracy gate), towhee_rt falls back to torch: callers that measure a format check it with
    ``onnx_model_file(pipe, fmt)``.
    """
    import towhee_rt as towhee

    builder = towhee.dummy_input()
    if fmt == "onnx_int8":
        builder = builder.pipeline_config(format_priority=[fmt],
                                          calibration_data=calibration_items(pipeline))
    elif fmt != "torch":
        builder = builder.pipeline_config(format_priority=[fmt])
    return add_operators(builder, pipeline, decode_config, model_config, decode_params,
                         **model_params).as_function()


def onnx_model_file(pipe, fmt: str = "onnx") -> str:
    """The ONNX file towhee_rt exported (and checked) for the pipeline's model operator."""
    choice = pipe.format_choice(len(pipe.steps) - 1)
    if choice is None or choice.format != fmt or not choice.model_file:
        raise RuntimeError(f"{pipe}: the model operator did not get the {fmt} format "
                           f"({choice.summary() if choice else 'no model'})")
    return choice.model_file


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine between two ``[N, D]`` arrays (or lists of ``N`` vectors)
    of the same shape: how far served vectors are from a reference."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


# ---------------------------------------------------------------------------------- timing
@dataclasses.dataclass
class ResultRow:
    """One measured point: how many items in how long, and per-request latencies (seconds)."""

    system: str
    pipeline: str
    items: int
    seconds: float
    latencies: List[float]
    items_per_request: int = 1
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""
    #: CPU (cores) used by processes outside the benchmark while this point ran.
    foreign_cores: Optional[float] = None
    #: CPU (cores) used by each of the benchmark's processes while this point ran.
    cpu_split: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> Optional[float]:
        if not self.latencies:
            return None
        return float(np.percentile(np.asarray(self.latencies), q) * 1000.0)

    def to_dict(self) -> Dict[str, Any]:
        return {"system": self.system, "pipeline": self.pipeline, "items": self.items,
                "seconds": round(self.seconds, 4), "items_per_s": round(self.items_per_s, 2),
                "p50_ms": _round(self.percentile_ms(50)), "p99_ms": _round(self.percentile_ms(99)),
                "items_per_request": self.items_per_request, "settings": self.settings,
                "foreign_cores": _round(self.foreign_cores, 2), "cpu_split": self.cpu_split,
                "note": self.note}


def _round(value: Optional[float], digits: int = 1) -> Optional[float]:
    return None if value is None else round(value, digits)


def time_loop(fn: Callable[[Any], Any], items: Sequence[Any]) -> (float, List[float]):
    """Call ``fn`` on each item in turn; return (total seconds, per-call seconds)."""
    latencies = []
    start = time.perf_counter()
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - start, latencies


class RequestTimer:
    """Records every request a towhee_rt ``Client`` reports (thread-safe).

    Give :meth:`record` to the client as its public hook,
    ``Client(url, model_name=..., on_request=timer.record)`` (or use :func:`timed_client`); the
    client is then used exactly as a user would use it.
    """

    def __init__(self):
        self.records: List["RequestRecord"] = []
        self._lock = threading.Lock()

    def record(self, request: "RequestRecord") -> None:
        """Keep one request's record (called by the client, in its sending thread)."""
        with self._lock:
            self.records.append(request)

    @property
    def latencies(self) -> List[float]:
        """Seconds of each request recorded since the last :meth:`reset`, failed ones too."""
        with self._lock:
            return [r.seconds for r in self.records]

    def reset(self) -> None:
        """Forget what was recorded so far."""
        with self._lock:
            self.records = []


def timed_client(url: str, model_name: str = "pipeline") -> Tuple[Any, RequestTimer]:
    """A gRPC ``towhee_rt.client.Client`` for ``model_name`` at ``url`` and the
    :class:`RequestTimer` that records its requests."""
    from towhee_rt.client import Client

    timer = RequestTimer()
    return Client(url, model_name=model_name, on_request=timer.record), timer


# ---------------------------------------------------------------------------------- machine
def git_commit() -> str:
    """``abc1234`` (``+dirty`` when the work tree differs) of the checkout measured."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "towhee_rt", "backends",
                                "model_repo_templates"], cwd=ROOT, text=True,
                               capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return (head or "-") + ("+dirty" if dirty else "")


def machine_info() -> Dict[str, Any]:
    """Machine, cores, date and library versions, stamped on every artifact."""
    try:
        import towhee_rt
        towhee_rt_version = getattr(towhee_rt, "__version__", package_version("towhee_rt"))
    except ImportError:
        towhee_rt_version = "-"
    towhee_rt_version += f" (git {git_commit()})"
    return {
        "cpu": cpu_model(), "cores": usable_cores(), "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "versions": {
            "towhee_rt": towhee_rt_version, "torch": package_version("torch"),
            "onnxruntime": package_version("onnxruntime"),
            "tritonserver": "2.51 (nvidia-pytriton %s)" % package_version("nvidia-pytriton"),
            "timm": package_version("timm"), "open_clip": package_version("open_clip_torch"),
            "sentence-transformers": package_version("sentence-transformers"),
            "tritonclient": package_version("tritonclient"), "numpy": package_version("numpy"),
        },
    }


def machine_line(info: Dict[str, Any]) -> str:
    v = info["versions"]
    return (f"{info['cpu']}, {info['cores']} cores, {info['date']}; towhee_rt {v['towhee_rt']}, "
            f"torch {v['torch']}, onnxruntime {v['onnxruntime']}, tritonserver "
            f"{v['tritonserver']}, timm {v['timm']}, open_clip {v['open_clip']}, "
            f"sentence-transformers {v['sentence-transformers']}")
