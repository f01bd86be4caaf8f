"""Stalls under steady load: ``python -m bench.stalls`` (issue 23, item 1).

A closed loop keeps N requests in flight against a served pipeline (plain ``tritonclient``, gRPC
or HTTP, one item per request) and records each request's send and receive time on the client
(``time.monotonic_ns``, the clock Triton's trace timestamps use). A *stall* is an interval of
more than ``--gap`` seconds (0.3) in which no request completes while requests are in flight.
Each stall is printed with what was going on:

* CPU over the interval, sampled every 50 ms from ``/proc``: the machine's busy cores, this
  benchmark's processes (client, tritonserver, each stub) and everything else. A stall while
  the machine was mostly idle is a real stall; one while foreign processes held the cores is
  CPU starvation.
* thread states of tritonserver and the stubs, and ``py-spy dump`` of every stub, taken by a
  watchdog as soon as no completion has arrived for ``--gap`` seconds (py-spy: optional,
  ``pip install py-spy``).
* Triton's trace (``--trace-config level=TIMESTAMPS``; off with ``--no-trace``) of the
  requests in flight during the stall, per step: queue, compute start/end.

Triton's statistics (queue vs compute ns per model) are read before and after each run.

Runs: ``--matrix`` is the search where stalls were reported (resnet18 fp32 ONNX, random
weights, one decode instance; 4/8/16 in flight; with and without dynamic batching; gRPC and
HTTP). Without it, each pipeline of ``--pipelines`` (resnet50, clip, minilm: random-weight image
models, real MiniLM) runs at its throughput point with the defaults, ``--duration`` seconds each
(``--duration 120``: the 2-minute target run). ``--compare gc`` runs each point twice: the
stubs' garbage collection as it is, and frozen after the model loads (patched into the
temporary repository's ``model.py`` copies, not into towhee_rt). Every run logs the stubs'
collections of generation 2 (and any over 5 ms) and the growth of their shared-memory pools.
Writes ``bench/results/stalls.json`` and ``stalls.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .common import RESULTS_DIR, base_items
from .stalls_analysis import (GAP_S, classify, find_stalls, model_stats, read_trace,
                              stats_delta, summarize, trace_excerpt)
from .stalls_patches import patch_preferred_batch, patch_stubs, read_gc_log
from .stalls_probe import Load, Sampler, loadavg, shm_sizes
from .stalls_report import result_line, write_report

#: Concurrency of each pipeline's throughput point (where the 2-core machine is saturated).
THROUGHPUT_POINT = {"resnet18": 8, "resnet50": 8, "clip": 8, "minilm": 16}


# ---------------------------------------------------------------------------- the pipelines
def build_pipe(pipeline: str, dynamic_batching: bool, min_side: Optional[int] = None):
    """The served pipeline: one decode instance; the model step with the builder's defaults
    (ONNX fp32, random weights for the image models), dynamic batching on or off."""
    import towhee_rt as towhee

    model_config = {"dynamic_batching": True} if dynamic_batching else {}
    builder = towhee.dummy_input().pipeline_config(format_priority=["onnx"])
    if pipeline == "minilm":
        return builder.text_embedding.sentence_transformers(
            op_config=model_config).as_function()
    decode = {"min_side": min_side} if min_side else {}
    builder = builder.image_decode.cv2_rgb(op_config={"instance_count": 1}, **decode)
    if pipeline in ("resnet18", "resnet50"):
        builder = builder.image_embedding.timm(model_name=pipeline, pretrained=False,
                                               op_config=model_config)
    elif pipeline == "clip":
        builder = builder.image_text_embedding.clip_image(
            model_name="clip_vit_base_patch32", pretrained=False, op_config=model_config)
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}")
    return builder.as_function()


def items(pipeline: str) -> List[bytes]:
    base = base_items("minilm" if pipeline == "minilm" else "resnet50")
    return [b.encode() if isinstance(b, str) else b for b in base]


# ---------------------------------------------------------------------------------- one run
@dataclasses.dataclass(frozen=True)
class RunConfig:
    pipeline: str
    concurrency: int
    protocol: str = "grpc"
    dynamic_batching: bool = False
    min_side: Optional[int] = None
    #: "default", or "freeze": an experiment patched into the repository's model.py copies
    #: (gc.collect() + gc.freeze() after initialize), see :func:`patch_stubs`.
    stub_gc: str = "default"
    #: An experiment: the model step's dynamic batcher gets ``preferred_batch_size: N`` (written
    #: into the temporary repository's config.pbtxt), so an instance that frees up takes N
    #: queued requests instead of all of them. None: as built.
    preferred_batch: Optional[int] = None

    @property
    def server_key(self):
        return (self.pipeline, self.dynamic_batching, self.min_side, self.stub_gc,
                self.preferred_batch)

    def label(self) -> str:
        return (f"{self.pipeline} {self.protocol} {self.concurrency} in flight, "
                f"batching {'on' if self.dynamic_batching else 'off'}"
                + (f", min_side={self.min_side}" if self.min_side else "")
                + (f", stub gc={self.stub_gc}" if self.stub_gc != "default" else "")
                + (f", model step preferred_batch_size={self.preferred_batch}"
                   if self.preferred_batch else ""))


def run_server(configs: Sequence[RunConfig], args, workdir: Path) -> List[Dict[str, Any]]:
    """Build and serve one repository, then run every config of it in turn."""
    import towhee_rt as towhee

    first = configs[0]
    pipe = build_pipe(first.pipeline, first.dynamic_batching, first.min_side)
    repo = towhee.build_model_repo(pipe, workdir / "repo", overwrite=True)
    gc_log = workdir / "gc.log"
    patch_stubs(Path(repo.path), first.stub_gc)
    if first.preferred_batch:
        patch_preferred_batch(Path(repo.path), first.preferred_batch)
    trace_file = workdir / "trace.json"
    extra = []
    if args.trace:
        extra += [f"--trace-config=triton,file={trace_file}", "--trace-config=level=TIMESTAMPS",
                  "--trace-config=rate=1", "--trace-config=count=-1",
                  # flushed every 20 traces (trace.json.0, .1, ...): a stop cut short loses
                  # only the tail
                  "--trace-config=log-frequency=20"]
    payloads = items(first.pipeline)
    results = []
    admin_key = "stalls-bench-admin"
    with towhee.serve(repo.path, grpc_port=0, http_port=0, metrics_port=0, admin_key=admin_key,
                      log_file=workdir / "tritonserver.log", extra_args=extra,
                      env={"TOWHEE_STALLS_GC_LOG": str(gc_log)}) as server:
        admin = {"triton-grpc-protocol-towhee-admin-key": admin_key}
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        for cfg in configs:
            load = Load(urls[cfg.protocol], cfg.protocol, repo.model_name, payloads,
                        cfg.concurrency, args.warmup, 4 * cfg.concurrency)
            load.run()  # warm-up: stubs, shm pools, connections
            load = Load(urls[cfg.protocol], cfg.protocol, repo.model_name, payloads,
                        cfg.concurrency, args.duration, args.max_requests)
            sampler = Sampler(server.pid, load, args.gap, args.pyspy)
            before = model_stats(server.grpc_url, admin)
            uptime_before = loadavg()
            sampler.start()
            requests = load.run()
            sampler.stop()
            after = model_stats(server.grpc_url, admin)
            labels = dict(sampler._labels)
            results.append({"config": dataclasses.asdict(cfg), "label": cfg.label(),
                            "loadavg_before": uptime_before, "loadavg_after": loadavg(),
                            "summary": summarize(requests),
                            "cpu": sampler.cpu_between(requests[0].send_ns,
                                                       requests[-1].recv_ns)
                            if requests else {},
                            "stats": stats_delta(before, after),
                            "shm_mib_after": {sampler._regions[k]: v / 2 ** 20 for k, v
                                              in shm_sizes().items() if k in sampler._regions},
                            "shm_growth": [(round((t - requests[0].send_ns) / 1e6), name, a, b)
                                           for t, name, a, b in sampler.shm_growth]
                            if requests else [],
                            "_requests": requests, "_sampler": sampler, "_labels": labels})
            print(result_line(results[-1]), flush=True)
    trace = read_trace(trace_file) if args.trace else []
    gcs = read_gc_log(gc_log)
    cores = os.cpu_count() or 1
    for res in results:
        sampler, requests = res.pop("_sampler"), res.pop("_requests")
        labels = res.pop("_labels")
        t_first = requests[0].send_ns if requests else 0
        t_last = requests[-1].recv_ns if requests else 0
        run_gcs = [g for g in gcs if t_first <= g[1] <= t_last]
        res["gc"] = {"gen2_count": sum(1 for g in run_gcs if g[3] == 2),
                     "gen2_max_ms": max([g[2] for g in run_gcs if g[3] == 2], default=0.0),
                     "over_5ms_count": len(run_gcs),
                     "ms_total": round(sum(g[2] for g in run_gcs), 1),
                     "max_ms": max([g[2] for g in run_gcs], default=0.0)}
        stalls = find_stalls(requests, args.gap)
        for st in stalls:
            st["cpu"] = sampler.cpu_between(st["start_ns"], st["end_ns"])
            st["kind"] = classify(st["cpu"], cores)
            st["dumps"] = [d for d in sampler.dumps if st["start_ns"] <= d["t_ns"] <= st["end_ns"]]
            if trace:
                st["trace"] = trace_excerpt(trace, st["start_ns"], st["end_ns"])
            st["gc"] = [f"{labels.get(g[0], g[0])}: gen{g[3]} {g[2]} ms at "
                        f"+{(g[1] - st['start_ns']) / 1e6:.0f} ms"
                        for g in run_gcs if st["start_ns"] - 1e9 <= g[1] <= st["end_ns"]]
        res["stalls"] = stalls
        t0 = requests[0].send_ns if requests else 0
        res["timeline"] = [[r.index, r.worker, round((r.send_ns - t0) / 1e6, 1),
                            round((r.recv_ns - t0) / 1e6, 1), r.ok] for r in requests]
        res["t0_ns"] = t0
    return results


# ------------------------------------------------------------------------------- the configs
#: What ``--compare`` runs each point under: the stubs' garbage collection as it is, and
#: frozen after the model loads (an experiment patched into the repository's copies).
VARIANTS = {"none": ("default",), "gc": ("default", "freeze")}
#: ``--compare batch``: each point as built, and with the model step's preferred batch size 1.
BATCH_VARIANTS = (None, 1)


def matrix_configs(variants: Sequence[str]) -> List[RunConfig]:
    """Where stalls were reported: resnet18 fp32, one decode instance, 4/8/16 in flight,
    batching off/on, gRPC and HTTP."""
    return [RunConfig("resnet18", n, proto, batching, stub_gc=g)
            for g in variants for batching in (False, True) for proto in ("grpc", "http")
            for n in (4, 8, 16)]


def target_configs(pipelines: Sequence[str], variants: Sequence[str],
                   concurrency: Sequence[int] = (), protocols: Sequence[str] = ("grpc",),
                   batching: Sequence[bool] = (False,),
                   preferred: Sequence[Optional[int]] = (None,)) -> List[RunConfig]:
    """Each pipeline at its throughput point (or at each of ``concurrency``), gRPC unless
    ``protocols`` says otherwise, with the defaults (dynamic batching off) unless ``batching``
    says otherwise."""
    return [RunConfig(p, n, proto, b, stub_gc=g, preferred_batch=pb)
            for p in pipelines for g in variants for pb in preferred for b in batching
            for proto in protocols for n in (concurrency or (THROUGHPUT_POINT[p],))]


def group_by_server(configs: Sequence[RunConfig]) -> List[List[RunConfig]]:
    groups: Dict[Any, List[RunConfig]] = {}
    for c in configs:
        groups.setdefault(c.server_key, []).append(c)
    return list(groups.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds of steady load per run (the target run: 120)")
    ap.add_argument("--max-requests", type=int, default=20000, help="requests per run, at most")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per run")
    ap.add_argument("--gap", type=float, default=GAP_S, help="stall threshold, seconds")
    ap.add_argument("--matrix", action="store_true",
                    help="the search: resnet18, 4/8/16 in flight, batching off/on, gRPC/HTTP")
    ap.add_argument("--pipelines", default="resnet50,clip,minilm")
    ap.add_argument("--concurrency", default="",
                    help="requests in flight, e.g. 8,16 (default: each pipeline's throughput "
                         "point)")
    ap.add_argument("--protocols", default="grpc", help="grpc, http or grpc,http")
    ap.add_argument("--batching", default="off", help="dynamic batching: off, on or off,on")
    ap.add_argument("--compare", choices=sorted(VARIANTS) + ["batch"], default="none",
                    help="gc: each point with the stubs' garbage collection as it is and frozen "
                         "after the model loads; batch: as built and with the model step's "
                         "preferred_batch_size 1 (both patched into the temporary repository)")
    ap.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True,
                    help="Triton's trace of every request (level TIMESTAMPS); on by default")
    ap.add_argument("--pyspy", default=shutil.which("py-spy") or
                    str(Path(sys.executable).parent / "py-spy"))
    ap.add_argument("--out", default=str(RESULTS_DIR / "stalls"))
    ap.add_argument("--notes", default=str(RESULTS_DIR / "stalls.findings.md"),
                    help="markdown appended to the report as its findings")
    ap.add_argument("--report-from", default=None,
                    help="write --out's report again from a JSON this script wrote (e.g. after "
                         "editing the findings), without running anything")
    args = ap.parse_args(argv)
    if args.report_from:
        doc = json.loads(Path(args.report_from).read_text())
        args.gap = doc.get("gap_s", args.gap)
        write_report(doc["runs"], args, Path(args.out), doc.get("failed_servers", []))
        print(f"wrote {args.out}.md / .json")
        return 0
    if args.duration > 600 or args.duration <= 0:
        ap.error("--duration must be in (0, 600] seconds")
    if not Path(args.pyspy).exists():
        print("py-spy not found: stalls are reported without stack dumps", file=sys.stderr)
        args.pyspy = None
    variants = VARIANTS.get(args.compare, VARIANTS["none"])
    preferred = BATCH_VARIANTS if args.compare == "batch" else (None,)
    configs = (matrix_configs(variants) if args.matrix else
               target_configs([p for p in args.pipelines.split(",") if p], variants,
                              [int(n) for n in args.concurrency.split(",") if n],
                              [p for p in args.protocols.split(",") if p],
                              [b == "on" for b in args.batching.split(",") if b], preferred))
    results: List[Dict[str, Any]] = []
    failures: List[Dict[str, str]] = []
    for group in group_by_server(configs):
        work = Path(tempfile.mkdtemp(prefix="stalls-"))
        try:
            results += run_server(group, args, work)
        except Exception as exc:  # noqa: BLE001 - one server failing must not lose the rest
            print(f"FAILED {group[0].label()}: {exc}", file=sys.stderr)
            failures.append({"label": group[0].label(), "error": str(exc)[:2000]})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    write_report(results, args, Path(args.out), failures)
    for r in results:
        for st in r["stalls"]:
            print(f"STALL {r['label']}: {st['ms']} ms, {st['in_flight']} in flight, "
                  f"{st['kind']}, cpu {st['cpu']}, gc {st.get('gc')}")
        print(f"GC {r['label']}: {r['gc']}")
    print(f"wrote {args.out}.md / .json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
