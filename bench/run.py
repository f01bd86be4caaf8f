"""towhee_rt against the tools its users would pick instead, measured in one run.

    python -m bench.run [--quick] [--pipelines resnet50,clip,minilm,lite0] [--requests N]
                        [--no-profile] [--out bench/results]

For each pipeline (timm resnet50 and open_clip ViT-B/32 image embedding on the shared test
images sent as encoded bytes; all-MiniLM-L6-v2 on sentences of mixed length; ``lite0``:
EfficientNet-Lite0 with its real ImageNet weights through ``checkpoint_path``), on this machine:

1. HF-style baseline: PIL decode + the library's own preprocessing + eager torch, batch 1;
2. towhee_rt local: ``as_function()`` with the torch format and with ``format_priority=['onnx']``;
3. towhee_rt served (ONNX format): ``build_model_repo`` + ``towhee_rt.serve`` + ``towhee_rt.Client``
   over gRPC (``mode='async_infer'``), a client-concurrency sweep, for several server settings;
4. the peer servers: PyTriton serving the same ONNX model + the same preprocessing in one
   ``@batch`` function, queried by the same client; LitServe (the same ONNX model and
   preprocessing in a ``LitAPI``) and, for MiniLM, Infinity, over HTTP (``bench/peer_rows.py``);
5. the ceiling: ONNX Runtime alone on preprocessed tensors, best batch size, 2 threads;
6. int8 (``onnx_int8``, ``bench/int8.py``): local, served and ceiling rows beside the fp32
   ones, and the min cosine of the served int8 output to an fp32 reference;
7. served, tuned (``bench/served_tuned.py``): the int8 repository after ``towhee_rt.tune`` for
   throughput and for latency (``--tune-budget`` seconds per tuner run; 0 skips them).

``lite0`` (issue 20) measures the HF-style loop, local, the ceiling, served fp32 and served
"int8-fast" (the README's setting: ``format_priority=['onnx_int8', 'onnx']``, calibrated on the
12 test images, ``min_side=256``, ``resize_crop``, ``preprocess='cv2'``); when the accuracy gate
refuses int8, that row serves fp32 ONNX and its system name and ``format`` say so. No tuned or
PyTriton-peer rows for it (the peer has no EfficientNet preprocessing).

Writes ``results.json`` (raw figures), ``results.md`` (the tables) and ``items_per_s.png`` under
``--out``, each stamped with the machine, the date and the versions; prints the summary table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import baselines, report
from .common import (PIPELINES, RESULTS_DIR, ResultRow, base_items, build_pipeline,
                     items_for, machine_info, machine_line, onnx_model_file, timed_client)
from .cpu_load import wait_for_quiet
from .int8 import int8_configs, is_int8, served_accuracy
from .served import (CONCURRENCY, RECOMMENDED, int8_rows, local, measure_client, served,
                     served_configs, served_format, served_pipeline)
from .served_config import ServedConfig

#: The int8 model's ceiling rows (not a prefix of ``report.CEILING``: ratios use fp32's).
INT8_CEILING = "int8 ceiling: ONNX Runtime alone on the int8 model"

#: A point measured while other processes used more than this many cores is measured again.
NOISY_CORES = 0.15


class Budget:
    """Seconds the run may spend waiting for other people's jobs to leave the CPU."""

    def __init__(self, seconds: float):
        self.left = seconds

    def quiet(self, max_wait: float = 15.0) -> float:
        if self.left <= 0:
            return wait_for_quiet(max_wait_s=0.0, sample_s=0.5)
        t0 = time.monotonic()
        load = wait_for_quiet(sample_s=0.5, max_wait_s=min(max_wait, self.left))
        self.left -= time.monotonic() - t0
        return load


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def measured(fn, budget: Budget, what: str) -> ResultRow:
    """``fn()`` after waiting for a quiet machine; once more if others loaded the CPU meanwhile."""
    budget.quiet()
    first = fn()
    if first.foreign_cores is not None and first.foreign_cores > NOISY_CORES and budget.left > 0:
        log(f"  {what}: other processes used {first.foreign_cores:.2f} cores; measuring again")
        budget.quiet(30.0)
        second = fn()
        best = min((first, second), key=lambda m: m.foreign_cores or 0.0)
        best.note = (best.note + "; " if best.note else "") + \
            f"re-measured (first try had {first.foreign_cores:.2f} foreign cores)"
        return best
    return first


def run_pipeline(pipeline: str, args, budget: Budget, out_dir: Path) -> Dict[str, Any]:
    n = args.requests or (96 if pipeline == "minilm" else 48)
    if args.quick:
        n = max(12, n // 2)
    items = items_for(pipeline, n)
    concurrencies = (1, 8) if args.quick else CONCURRENCY
    rows: List[ResultRow] = []
    extra: Dict[str, Any] = {"requests_per_point": n}

    def add(m: ResultRow) -> ResultRow:
        rows.append(m)
        p50 = m.percentile_ms(50)
        log(f"  {m.system:58s} {m.items_per_s:7.1f} items/s  p50 "
            f"{'-' if p50 is None else f'{p50:.0f} ms'}  "
            f"{json.dumps({k: v for k, v in m.settings.items() if k in ('concurrency', 'batch_size')})}"
            f"  foreign {m.foreign_cores or 0:.2f}")
        return m

    log(f"{pipeline}: {n} requests per point")
    # 1. HF-style baseline
    add(measured(lambda: baselines.hf_baseline(pipeline, items), budget, "HF baseline"))
    # 2. towhee_rt local
    latency_items = items[:12]
    pipe_onnx = build_pipeline(pipeline, "onnx")
    model_file = onnx_model_file(pipe_onnx)
    extra["onnx_model_file"] = model_file
    extra["onnx_format"] = pipe_onnx.format_choice(len(pipe_onnx.steps) - 1).summary()
    if not args.quick or pipeline == "resnet50":
        pipe_torch = build_pipeline(pipeline, "torch")
        add(measured(lambda: local(pipeline, "torch", items, latency_items, pipe_torch), budget,
                     "local torch"))
        pipe_torch.close()
    add(measured(lambda: local(pipeline, "onnx", items, latency_items, pipe_onnx), budget,
                 "local onnx"))
    # 5. the ceiling (before the servers: it is the reference for every ratio)
    for m in ceiling(pipeline, pipe_onnx, model_file, items, budget):
        add(m)
    pipe_onnx.close()
    # 2b + 5b. int8: local (the settings of the recommended int8 server) and its own ceiling
    try:
        for m in local_int8(pipeline, args, budget, items, latency_items, extra):
            add(m)
    except Exception as exc:  # noqa: BLE001 - e.g. the accuracy gate refused int8
        log(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
        extra.setdefault("failures", []).append(
            {"system": "towhee_rt local, int8", "error": f"{type(exc).__name__}: {exc}"[:2000]})
    # 3. towhee_rt served
    for config in served_configs(pipeline, quick=args.quick):
        log(f" served: {config.label}")
        try:
            with served(pipeline, config) as (server, client, info):
                fmt = info["served_format"]
                # int8 serves ~3x faster: 3x the requests keeps each point's window near 2 s.
                point_items = items_for(pipeline, 3 * n) if fmt == "onnx_int8" else items
                system = f"towhee_rt served, {config.label}"
                if fmt != config.format:  # format_priority: the gate chose another format
                    system += f" -> SERVED {fmt} (int8 gate refused)"
                    log(f"  served {fmt}, not {config.format}: {info['model_format'][:300]}")
                    info["notes"].append(f"served {info['model_format'][:300]}")
                for c in concurrencies:
                    settings = {**config.describe(), "startup_s": info["startup_s"],
                                "model_format": info["model_format"], "format": fmt}
                    m = add(measured(lambda: measure_client(system, pipeline, client,
                                                            info["timer"], point_items, c,
                                                            settings=settings), budget, system))
                    m.note = "; ".join(x for x in info["notes"] + [m.note] if x)
                    m.settings["config"] = config.label
                if is_int8(config):
                    accuracy = served_accuracy(pipeline, client, base_items(pipeline))
                    extra.setdefault("int8", {})[config.label] = {
                        "model_format": info["model_format"], "served_format": fmt,
                        "gate_min_cosine": info["gate_min_cosine"], "served": accuracy}
                    log(f"  served int8 accuracy: min cosine {accuracy['min_cosine']} to "
                        f"{accuracy['reference']}; gate {info['gate_min_cosine']}")
                profiled = (RECOMMENDED, int8_rows(pipeline)[0])
                if config in profiled and args.profile and pipeline == "resnet50":
                    extra.setdefault("profiles", {})[config.label] = profile_recommended(
                        pipeline, server, client, rows, out_dir, config,
                        "profile_resnet50_int8" if is_int8(config) else "profile_resnet50")
        except Exception as exc:  # noqa: BLE001 - one failed configuration is a result too
            log(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            extra.setdefault("failures", []).append(
                {"system": f"towhee_rt served, {config.label}",
                 "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
    # 7. towhee_rt served, tuned (the int8 repository after towhee_rt.tune)
    if args.tune_budget > 0 and pipeline != "lite0":
        tuned(pipeline, args, budget, items, concurrencies, add, extra)
    # 4. the peer
    if pipeline == "lite0":  # the peer has no EfficientNet preprocessing
        return {"rows": [m.to_dict() for m in rows], **extra}
    from .peer_pytriton import start_peer

    log(" peer: PyTriton")
    try:
        with start_peer(pipeline, model_file) as peer:
            client, timer = timed_client(peer["grpc_url"], "pipeline")
            try:
                for c in concurrencies:
                    system = "PyTriton peer (same ONNX + preprocessing, @batch)"
                    settings = {"format": "onnx", "dynamic_batching": "max 16, 2 ms",
                                "intra_op_threads": 2, "startup_s": peer["startup_s"]}
                    add(measured(lambda: measure_client(system, pipeline, client, timer, items, c,
                                                        settings=settings), budget, system))
            finally:
                client.close()
    except Exception as exc:  # noqa: BLE001
        log(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
        extra.setdefault("failures", []).append(
            {"system": "PyTriton peer", "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
    # 4b. the HTTP peers users pick: LitServe, and Infinity for MiniLM (bench/peer_rows.py)
    from .peer_rows import http_peer_rows

    http_peer_rows(pipeline, model_file, items, concurrencies, args.quick,
                   lambda fn, what: measured(fn, budget, what), add, extra, log)
    return {"rows": [m.to_dict() for m in rows], **extra}


def tuned(pipeline: str, args, budget: Budget, items, concurrencies, add,
          extra: Dict[str, Any]) -> None:
    """The "served, tuned" rows (``bench/served_tuned.py``); a failure is a result too."""
    from .served_tuned import tuned_rows

    config = int8_configs(pipeline, args.quick)[0]
    point_items = items_for(pipeline, 3 * len(items))
    try:
        rows, info = tuned_rows(pipeline, config, point_items, concurrencies, args.tune_budget,
                                lambda fn, what: measured(fn, budget, what), log)
        for m in rows:
            add(m)
        extra["tuned"] = info
    except Exception as exc:  # noqa: BLE001
        log(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
        extra.setdefault("failures", []).append(
            {"system": "towhee_rt served, tuned", "error": f"{type(exc).__name__}: {exc}"[:2000]})


def local_int8(pipeline: str, args, budget: Budget, items, latency_items,
               extra: Dict[str, Any]) -> List[ResultRow]:
    """The local int8 row (the recommended int8 server's settings) and the int8 ceiling; none
    when a ``format_priority`` config got another format (the gate refused int8: logged, and
    in ``extra["int8_format"]``)."""
    config = int8_rows(pipeline, args.quick)[0]
    pipe = served_pipeline(pipeline, config)  # fails if int8 did not pass the gate
    extra["int8_format"] = pipe.format_choice(len(pipe.steps) - 1).summary()
    if served_format(pipe) != "onnx_int8":
        log(f"  no local int8 rows: {extra['int8_format'][:300]}")
        extra["int8_refused"] = extra["int8_format"]
        pipe.close()
        return []
    # The setting less what only a server has (instances, dynamic batching).
    label = "towhee_rt local, " + config.label.rsplit(", ", 1)[0].replace(
        ", dynamic batching", "")
    int8_items = items_for(pipeline, 3 * len(items))  # ~3x faster: as long a window
    rows = [measured(lambda: local(pipeline, "onnx_int8", int8_items, latency_items, pipe,
                                   label), budget, "local int8")]
    rows += ceiling(pipeline, pipe, onnx_model_file(pipe, "onnx_int8"), items, budget,
                    INT8_CEILING)
    pipe.close()
    return rows


def ceiling(pipeline: str, pipe, model_file: str, items, budget: Budget,
            system: str = "ceiling: ONNX Runtime alone") -> List[ResultRow]:
    """The ceiling points (every batch size), measured again once if others loaded the CPU."""
    budget.quiet()
    best, tried = baselines.onnx_ceiling(pipeline, pipe, model_file, items, system=system)
    if best.foreign_cores and best.foreign_cores > NOISY_CORES and budget.left > 0:
        budget.quiet(30.0)
        best2, tried2 = baselines.onnx_ceiling(pipeline, pipe, model_file, items, system=system)
        if best2.items_per_s > best.items_per_s:
            tried = tried2
    return tried


def profile_recommended(pipeline: str, server, client, rows: List[ResultRow], out_dir: Path,
                        config: ServedConfig, prefix: str) -> Dict[str, Any]:
    """py-spy every stub of a server under load (8 in flight); SVGs named ``prefix_*``."""
    from .profiling import profile_server

    rate = max((m.items_per_s for m in rows if m.settings.get("config") == config.label),
               default=20.0)
    seconds = 4.0
    count = int(math.ceil(rate * (seconds + 2.0)))
    items = items_for(pipeline, count)

    def load():
        client.infer(items, mode="async_infer", concurrency=8)

    log("  profiling the stubs with py-spy (not timed)")
    return profile_server(server.pid, load, out_dir, prefix, seconds=seconds)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests, concurrencies 1 and 8, two server settings")
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help=f"comma-separated subset of {','.join(PIPELINES)}")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per measured point (default 48, MiniLM 96)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile of the recommended resnet50 server")
    parser.add_argument("--tune-budget", type=float, default=120.0,
                        help="seconds per towhee_rt.tune run for the 'served, tuned' rows "
                             "(two runs per pipeline; 0 skips them)")
    parser.add_argument("--quiet-budget", type=float, default=None,
                        help="max seconds to wait in total for other jobs to leave the CPU")
    args = parser.parse_args(argv)
    pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    bad = [p for p in pipelines if p not in PIPELINES]
    if bad:
        parser.error(f"unknown pipeline(s) {bad}; choose from {', '.join(PIPELINES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("towhee_rt").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)

    info = machine_info()
    log(machine_line(info))
    budget = Budget(args.quiet_budget if args.quiet_budget is not None else
                    (30.0 if args.quick else 120.0))
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {"machine": info, "quick": args.quick, "pipelines": {}}
    for pipeline in pipelines:
        results["pipelines"][pipeline] = run_pipeline(pipeline, args, budget, args.out)
    images = [p for p in pipelines if p not in ("minilm", "lite0")]  # lite0: bench.quality
    if images:  # issue 15: the check behind preprocess='cv2' (bench/preprocess_check.py)
        from . import preprocess_check

        log("preprocess='cv2' against the reference transform")
        results["preprocess_check"] = preprocess_check.run(images)
    results["run_seconds"] = round(time.perf_counter() - start, 1)
    results["quiet_wait_budget_left_s"] = round(budget.left, 1)
    paths = report.write_all(results, args.out)
    print()
    print(report.summary_markdown(results))
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {results['run_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
