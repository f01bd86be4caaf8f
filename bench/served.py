"""towhee_rt measured the way users run it: ``as_function()`` locally, and served on Triton.

Served rows: ``build_model_repo`` + ``towhee_rt.serve`` (the embedded tritonserver 2.51 on free
loopback ports), queried by ``towhee_rt.Client`` over gRPC with ``mode='async_infer'`` and a
given number of requests in flight, one item per request. The model operator uses the ONNX
format (``format_priority=['onnx']``) unless a configuration names ``onnx_int8``, or a
``format_priority`` whose first passing format is served (``lite0``'s int8-fast row: what the
int8 gate decided is in ``info["served_format"]`` and ``info["model_format"]``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .common import (RequestTimer, ResultRow, add_operators, build_pipeline,
                     calibration_items, onnx_model_file, time_loop, timed_client)
from .cpu_load import CpuSplit, ForeignLoad
from .int8 import int8_configs, int8_image
from .served_config import ServedConfig

CONCURRENCY = (1, 4, 8, 16)


# ---------------------------------------------------------------------------------- local
def local(pipeline: str, fmt: str, items: Sequence[Any], latency_items: Sequence[Any],
          pipe=None, label: Optional[str] = None) -> ResultRow:
    """``pipe(items)`` (one call, chunks of 8) for items/s; ``pipe(item)`` one by one for latency."""
    pipe = pipe or build_pipeline(pipeline, fmt)
    pipe(list(items[:8]))  # warm-up (sets up the operators)
    load = ForeignLoad()
    start = time.perf_counter()
    pipe(list(items))
    seconds = time.perf_counter() - start
    _, latencies = time_loop(pipe, latency_items)
    label = label or f"towhee_rt local, {fmt}"
    return ResultRow(label, pipeline, len(items), seconds, latencies,
                       settings={"format": pipe.formats(), "chunksize": 8},
                       foreign_cores=load.cores())


# --------------------------------------------------------------------------------- served
def served_pipeline(pipeline: str, config: ServedConfig):
    """The towhee_rt pipeline for ``config``, ready for ``build_model_repo``."""
    model_config: Dict[str, Any] = {}
    if config.model_instances:
        model_config["instance_count"] = config.model_instances
    if config.dynamic_batching:
        model_config["dynamic_batching"] = config.dynamic_batching
    params = {"num_threads": config.num_threads} if config.num_threads else {}
    params.update(dict(config.model_params))
    decode_config = {"instance_count": config.decode_instances}
    if config.format_priority:
        return _priority_pipeline(pipeline, config, decode_config, model_config, params)
    pipe = build_pipeline(pipeline, config.format, decode_config=decode_config,
                          model_config=model_config, decode_params=dict(config.decode_params),
                          **params)
    onnx_model_file(pipe, config.format)  # fails rather than measure a fallback format
    return pipe


def _priority_pipeline(pipeline: str, config: ServedConfig, decode_config, model_config,
                       params):
    """``pipeline_config(format_priority=config.format_priority, calibration_data=...)`` as a
    user writes it: whichever listed format passes its checks is served (never torch)."""
    import towhee_rt as towhee

    priority = list(config.format_priority)
    gate = {"accuracy_gate": dict(config.accuracy_gate)} if config.accuracy_gate else {}
    builder = towhee.dummy_input().pipeline_config(
        format_priority=priority, calibration_data=calibration_items(pipeline), **gate)
    pipe = add_operators(builder, pipeline, decode_config, model_config,
                         dict(config.decode_params), **params).as_function()
    choice = pipe.format_choice(len(pipe.steps) - 1)
    if choice is None or choice.format not in priority:
        pipe.close()
        raise RuntimeError(f"{pipe}: none of {priority} passed "
                           f"({choice.summary() if choice else 'no model'})")
    return pipe


def served_format(pipe) -> str:
    """The format the pipeline's model operator got (``onnx_int8``, ``onnx``...)."""
    choice = pipe.format_choice(len(pipe.steps) - 1)
    return choice.format if choice is not None else "-"


@contextlib.contextmanager
def served(pipeline: str, config: ServedConfig, workdir: Optional[Path] = None,
           patch_repo=None) -> Iterator[Any]:
    """Build the repository for ``config``, serve it, yield ``(server, client, info)``; stop it.

    ``info["timer"]`` is the :class:`RequestTimer` recording the client's requests.

    ``patch_repo(repo)``, for experiments only, may edit the written repository (e.g. its
    ``towhee_ops/*.py`` copies) before the server starts: how a proposed towhee_rt change is
    measured without changing towhee_rt.
    """
    import towhee_rt as towhee

    pipe = served_pipeline(pipeline, config)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{pipeline}-", dir=workdir))
    try:
        repo = towhee.build_model_repo(pipe, tmp / "repo")
        notes = []
        if patch_repo is not None:
            notes.append(str(patch_repo(repo)))
        t0 = time.perf_counter()
        with towhee.serve(repo.path, grpc_port=0, http_port=0, metrics_port=0,
                          log_file=tmp / "tritonserver.log",
                          env=dict(config.server_env)) as server:
            startup = time.perf_counter() - t0
            client, timer = timed_client(server.grpc_url, repo.model_name)
            choice = pipe.format_choice(len(pipe.steps) - 1)
            try:
                yield server, client, {"notes": notes, "startup_s": round(startup, 1),
                                       "repo": str(repo.path), "model_format": choice.summary(),
                                       "served_format": choice.format,
                                       "gate_min_cosine": choice.min_cosine, "timer": timer}
            finally:
                client.close()
        pipe.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_client(system: str, pipeline: str, client, timer: RequestTimer,
                   items: Sequence[Any], concurrency: int, warmup: Optional[int] = None,
                   settings: Optional[dict] = None) -> ResultRow:
    """Send ``items`` one per request, ``concurrency`` in flight (``mode='async_infer'``).

    ``timer`` is the :class:`RequestTimer` given to ``client`` as ``on_request``: the
    per-request latencies come from it.
    """
    warm = list(items[:warmup if warmup is not None else max(4, concurrency)])
    client.infer(warm, mode="async_infer", concurrency=concurrency)
    timer.reset()
    load, split = ForeignLoad(), CpuSplit()
    start = time.perf_counter()
    client.infer(list(items), mode="async_infer", concurrency=concurrency)
    seconds = time.perf_counter() - start
    return ResultRow(system, pipeline, len(items), seconds, list(timer.latencies),
                       settings={"concurrency": concurrency, **(settings or {})},
                       foreign_cores=load.cores(), cpu_split=split.cores())


def sweep(pipeline: str, config: ServedConfig, items: Sequence[Any],
          concurrencies: Sequence[int] = CONCURRENCY, system: Optional[str] = None,
          workdir: Optional[Path] = None, on_server=None, patch_repo=None
          ) -> List[ResultRow]:
    """One served configuration at each client concurrency (one server start)."""
    system = system or f"towhee_rt served, {config.label}"
    out = []
    with served(pipeline, config, workdir, patch_repo) as (server, client, info):
        for concurrency in concurrencies:
            m = measure_client(system, pipeline, client, info["timer"], items, concurrency,
                               settings={**config.describe(), "startup_s": info["startup_s"]})
            m.note = "; ".join(info["notes"])
            out.append(m)
        if on_server is not None:
            on_server(server, client)
    return out


# --------------------------------------------------------------------- the settings compared
OMP_ONE_THREAD = (("OMP_NUM_THREADS", "1"),)
#: What the stubs got before model.py defaulted OMP_NUM_THREADS to 1 (one thread per core):
#: an explicit environment wins over that default, so this measured the old behaviour (its
#: row left the run in issue 15: results.md of 2026-11-24 has it).
OMP_PER_CORE = (("OMP_NUM_THREADS", "2"),)

#: The best settings found for the served resnet50 pipeline on 2 cores, now towhee_rt's
#: defaults: two single-threaded model instances (5bb4265; the builder gives each
#: num_threads = cores // 2, so ONNX Runtime has no intra-op pool to spin) and OMP_NUM_THREADS=1
#: in the stubs (5577898; torch only runs the preprocessing transforms there).
RECOMMENDED = ServedConfig("defaults: 2 model instances x 1 thread, no dynamic batching")
#: The default before 5bb4265.
ONE_INSTANCE = ServedConfig("1 model instance x 2 threads (the default before 5bb4265)",
                            model_instances=1)
#: For lone requests: one instance with 2 ONNX Runtime threads answers a single request in
#: about 2/3 of RECOMMENDED's time, for a few percent less throughput under load.
LOW_LATENCY = ServedConfig("1 model instance x 2 threads + dynamic batching", model_instances=1,
                           dynamic_batching=True)


#: EfficientNet-Lite0 (real weights): timm's own transform resizes to 256 and crops 224.
LITE0_RESIZE_CROP = [256, 224, 224]
#: The README's fast int8 setting on real weights, as a user writes it: int8 when the accuracy
#: gate passes it, else fp32 ONNX (the rows then say so: ``served_format``).
LITE0_INT8_FAST = ServedConfig(
    "int8-fast: format_priority=['onnx_int8','onnx'] + decode min_side=256, resize_crop, "
    "preprocess='cv2', 2 decode + 2 model instances x 1 thread", format="onnx_int8",
    format_priority=("onnx_int8", "onnx"), decode_instances=2,
    decode_params=(("min_side", 256), ("resize_crop", LITE0_RESIZE_CROP)),
    model_params=(("preprocess", "cv2"),))
#: The same with the search-neighbour accuracy gate (issue 20, docs/formats.md), which passes
#: Lite0's static int8 where the default min-cosine gate refuses it.
LITE0_INT8_NEIGHBOUR_GATE = dataclasses.replace(
    LITE0_INT8_FAST, label=LITE0_INT8_FAST.label.replace(
        "format_priority=['onnx_int8','onnx']", "format_priority=['onnx_int8','onnx'], "
        "accuracy_gate=topk_agreement k=5 min=0.9"),
    accuracy_gate=(("metric", "topk_agreement"), ("k", 5), ("min", 0.9)))
#: The same decode and preprocessing in fp32: what int8 adds, apart from the fast image path.
LITE0_FP32_FAST = ServedConfig(
    "fp32 + decode min_side=256, resize_crop, preprocess='cv2', 2 decode + 2 model instances "
    "x 1 thread", decode_instances=2, decode_params=LITE0_INT8_FAST.decode_params,
    model_params=LITE0_INT8_FAST.model_params)


def int8_rows(pipeline: str, quick: bool = False) -> List[ServedConfig]:
    """The served int8 settings of ``pipeline`` (the first is the recommended one)."""
    if pipeline == "lite0":
        return [LITE0_INT8_FAST, LITE0_INT8_NEIGHBOUR_GATE]
    return int8_configs(pipeline, quick)


def served_configs(pipeline: str, quick: bool = False) -> List[ServedConfig]:
    """The server settings measured for ``pipeline``: fp32, then int8."""
    if pipeline == "lite0":  # issue 20: HF-style vs served fp32 vs served int8-fast
        return [RECOMMENDED] + ([] if quick else [LITE0_FP32_FAST]) + int8_rows(pipeline)
    if quick:
        return [RECOMMENDED, ONE_INSTANCE] + int8_configs(pipeline, quick)
    fast_prep = []
    if pipeline != "minilm":  # the int8 row's decode, preprocessing and batching, in fp32
        int8 = int8_image(pipeline)
        fast_prep = [dataclasses.replace(int8, format="onnx", label=int8.label.replace(
            "int8 (onnx_int8)", "fp32"))]
    return [
        RECOMMENDED,
        ServedConfig("2 model instances + dynamic batching", model_instances=2,
                     dynamic_batching=True),
        ONE_INSTANCE,
        LOW_LATENCY,
    ] + fast_prep + int8_configs(pipeline, quick)
