"""One client over 1, 2 and 3 replicas of a served pipeline, on this one machine.

    python -m bench.replicas [--items 240] [--concurrency 8] [--rounds 3]

Serves ``image_decode.cv2_rgb`` (the cheapest real pipeline, so that the client's own cost
shows) on three embedded tritonservers (free loopback ports, one repository) and sends the same
work (``--items`` encoded test images, one per request, ``--concurrency`` in flight) through one
``towhee_rt.Client`` of the first 1, 2 or 3 of them, interleaved over ``--rounds`` rounds. The
replicas share this machine's cores, so more replicas cannot be faster: the figures say what
spreading costs the client (CPU per item, latency) and how fair it is (each replica's share of
the items), not how a cluster scales. Each server runs the decode step with one instance (one
request at a time), so more replicas also mean more decode instances at once: the control,
one server with ``instance_count=3``, gives that parallelism without spreading. Writes
``bench/results/replicas.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from .common import (RESULTS_DIR, RequestTimer, ResultRow, image_bytes, machine_info,
                     machine_line)
from .cpu_load import CpuSplit, ForeignLoad, wait_for_quiet

REPLICAS = (1, 2, 3)
#: The control: one server whose decode step has 3 instances.
CONTROL = "1 x 3 instances"
CLIENT = "bench process (client)"


def _point(urls: List[str], items: List[bytes], concurrency: int) -> Dict[str, Any]:
    """Send ``items`` through one client of ``urls``: items/s, latencies, shares, CPU."""
    from towhee_rt.client import Client

    timer = RequestTimer()
    wait_for_quiet(max_wait_s=5.0)
    with Client(urls, on_request=timer.record) as client:
        client.infer(items[:concurrency], mode="async_infer", concurrency=concurrency)  # warm
        timer.reset()
        load, split = ForeignLoad(), CpuSplit()
        start = time.perf_counter()
        client.infer(items, mode="async_infer", concurrency=concurrency)
        seconds = time.perf_counter() - start
        cpu, foreign = split.cores(), load.cores()
    records = timer.records
    served = collections.Counter(r.url for r in records if r.error is None)
    measured = ResultRow(f"{len(urls)} replica(s)", "decode", len(items), seconds,
                           [r.seconds for r in records])
    return {"replicas": str(len(urls)), "items": len(items), "seconds": round(seconds, 3),
            "items_per_s": round(measured.items_per_s, 1),
            "p50_ms": round(measured.percentile_ms(50), 1),
            "p99_ms": round(measured.percentile_ms(99), 1),
            "shares": [round(served[url] / len(items), 3) for url in urls],
            "failed_requests": sum(r.error is not None for r in records),
            "client_cpu_ms_per_item": round(cpu.get(CLIENT, 0.0) * seconds / len(items) * 1e3,
                                            2),
            "foreign_cores": round(foreign, 2)}


def measure(items: int, concurrency: int, rounds: int) -> List[Dict[str, Any]]:
    """Every point of every round (replica counts interleaved within a round)."""
    import towhee_rt as towhee
    from towhee_rt.triton.server import TritonServer

    base = image_bytes()
    work = [base[k % len(base)] for k in range(items)]
    one = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    three = towhee.dummy_input().image_decode.cv2_rgb(op_config={"instance_count": 3}) \
        .as_function()
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        repo = towhee.build_model_repo(one, Path(tmp) / "repo").path
        control = towhee.build_model_repo(three, Path(tmp) / "control").path
        servers = [TritonServer(repo) for _ in REPLICAS] + [TritonServer(control)]
        try:
            for server in servers:  # one by one: each picks free ports after the last bound
                server.start().wait_ready()
            urls = [server.grpc_url for server in servers]
            setups = {str(count): urls[:count] for count in REPLICAS}
            setups[CONTROL] = urls[-1:]
            for round_ in range(rounds):
                order = list(setups) if round_ % 2 == 0 else list(reversed(list(setups)))
                for label in order:
                    point = {**_point(setups[label], work, concurrency), "replicas": label}
                    points.append({"round": round_ + 1, **point})
                    print(points[-1], flush=True)
        finally:
            for server in servers:
                server.stop()
    return points


def _median(points: List[Dict[str, Any]], key: str) -> float:
    return statistics.median(p[key] for p in points)


def markdown(points: List[Dict[str, Any]], args: argparse.Namespace,
             info: Dict[str, Any]) -> str:
    """The results page: medians per replica count, then every point."""
    lines = [
        "# One client, 1 to 3 replicas on one machine", "", machine_line(info), "",
        f"Command: `python -m bench.replicas --items {args.items} --concurrency "
        f"{args.concurrency} --rounds {args.rounds}`", "",
        f"Pipeline `image_decode.cv2_rgb` served by up to three embedded tritonservers (one "
        f"repository), {args.items} encoded test images per point, one per request, "
        f"{args.concurrency} in flight, through one `towhee_rt.Client(urls)` (gRPC); replica "
        "counts interleaved within each round.", "",
        f"**The replicas share this machine's {info['cores']} cores**, with each other, with "
        "the client and with whatever else runs here (\"other load\": CPU of processes outside "
        "the benchmark, in cores, during the point; other sessions ran tests at the same time). "
        "More replicas add no cores here: the point is what spreading costs the client (its CPU "
        "per item) and how fair it is (the shares), not a speed-up. Where more replicas are "
        "faster, it is because each server runs the decode step with one instance (one request "
        f"at a time), so three servers decode three at once; the control row `{CONTROL}` (one "
        "server, `instance_count=3`) gets that parallelism without spreading.", "",
        "| replicas | items/s | p50 (ms) | p99 (ms) | client CPU per item (ms) | "
        "share per replica | other load (cores) |", "|---:|---:|---:|---:|---:|---|---:|"]
    for label in [str(count) for count in REPLICAS] + [CONTROL]:
        mine = [p for p in points if p["replicas"] == label]
        shares = [statistics.median(p["shares"][k] for p in mine)
                  for k in range(len(mine[0]["shares"]))]
        lines.append(
            f"| {label} | {_median(mine, 'items_per_s'):.0f} | {_median(mine, 'p50_ms'):.1f} | "
            f"{_median(mine, 'p99_ms'):.1f} | {_median(mine, 'client_cpu_ms_per_item'):.2f} | "
            f"{' / '.join(f'{100 * s:.0f} %' for s in shares)} | "
            f"{_median(mine, 'foreign_cores'):.2f} |")
    lines += ["", "Medians over the rounds (shares: median of each replica's share). Every "
              "point:", "", "| round | replicas | items/s | p50 (ms) | p99 (ms) | client CPU "
              "per item (ms) | shares | failed requests | other load |",
              "|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    lines += [f"| {p['round']} | {p['replicas']} | {p['items_per_s']:.0f} | {p['p50_ms']:.1f} | "
              f"{p['p99_ms']:.1f} | {p['client_cpu_ms_per_item']:.2f} | "
              f"{' / '.join(f'{100 * s:.0f} %' for s in p['shares'])} | "
              f"{p['failed_requests']} | {p['foreign_cores']:.2f} |" for p in points]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    info = machine_info()
    points = measure(args.items, args.concurrency, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replicas.json").write_text(json.dumps(
        {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
         "points": points}, indent=1) + "\n")
    (args.out / "replicas.md").write_text(markdown(points, args, info))
    print(f"wrote {args.out / 'replicas.md'}")


if __name__ == "__main__":
    main()
