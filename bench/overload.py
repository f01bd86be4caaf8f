"""Overload: how much work the server does for callers that have already given up.

    python -m bench.overload [--in-flight 96] [--timeout 1.0] [--rounds 2] [--no-control]

The pipeline (``cv2_rgb -> timm resnet18``, **random weights**: speed does not depend on them,
ONNX, served defaults) runs on the embedded tritonserver on 127.0.0.1. One towhee_rt ``Client``
with ``timeout=--timeout`` sends ``--rounds`` rounds of ``--in-flight`` images, all of a round
in flight at once (``concurrency=--in-flight``), far more than the server can answer in time.
After each round the server is left to drain. Counted:

* **delivered**: results that reached the client; **gave up**: items that failed with the
  client's DeadlineExceededError; **sent**: requests the client sent (retries included);
* **computed**: requests the model step ran its operator on: Triton's ``success`` count of the
  model step less the requests it **dropped** past their deadline (Triton counts a request a
  Python model answered with an error as a success; the drops come from the adapters' own log
  lines); cross-checked against the ensemble's ``success`` count;
* **wasted** = computed - delivered: images the model computed for callers that had given up.
  Target: at most a quarter of the in-flight count.

The same load runs twice, on one server whose repository holds the pipeline twice: as shipped
(``pipeline``), then as the control (``control``, ``--no-control`` skips it), whose adapters
have the deadline check turned off, i.e. Triton's own per-step timeouts only, as before the
deadline travelled with the request. Writes ``bench/results/overload.md`` and ``overload.json``.
About 60 s on a quiet 2-core machine (the ONNX export, one server start, 2 x 2 rounds).
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

from .common import RESULTS_DIR, image_bytes, machine_info, machine_line

MODEL = "resnet18"
#: The adapters' total of requests dropped past their deadline, logged when a model unloads.
_DROPS = re.compile(r"([\w.-]+): (\d+) requests dropped past their deadline since start")
#: What the control changes in each model's copy of the adapter: the deadline check.
_NO_CHECK = ("\nclass TritonPythonModel:", "\noverdue_ms = lambda *args: None  # control: no request is ever late\n"
             "\n\nclass TritonPythonModel:")


#: The two pipelines of the run: the shipped adapters, and the control.
SHIPPED, CONTROL = "pipeline", "control"


def build(path: Path) -> Path:
    """One repository at ``path`` with the resnet18 pipeline (random weights, ONNX) twice:
    ``pipeline`` as shipped, and ``control``, whose adapters never find a request late."""
    import towhee_rt as towhee

    pipe = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name=MODEL, pretrained=False).as_function())
    for name in (SHIPPED, CONTROL):
        towhee.build_model_repo(pipe, path, model_name=name, overwrite=True)
    for adapter in path.glob(f"{CONTROL}_*/1/model.py"):
        text = adapter.read_text()
        if _NO_CHECK[0] not in text:
            raise RuntimeError(f"{adapter}: the adapter changed; update bench/overload.py")
        adapter.write_text(text.replace(_NO_CHECK[0], _NO_CHECK[1], 1))
    return path


def stats(server, model: str) -> Dict[str, int]:
    """Triton's counts for ``model`` (statistics API, with the admin key)."""
    from towhee_rt.triton.flags import key_headers

    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/stats",
                                     headers=key_headers("http", admin_key=server.admin_key))
    with urllib.request.urlopen(request, timeout=10) as response:
        found = json.load(response)["model_stats"][0]
    inference = found["inference_stats"]
    return {"success": inference["success"]["count"], "fail": inference["fail"]["count"],
            "executions": found["execution_count"],
            "compute_s": round(inference["compute_infer"]["ns"] / 1e9, 2)}


def _drained(server, models: List[str], quiet_s: float = 2.0, limit_s: float = 20.0):
    """Wait until no model's counts have changed for ``quiet_s`` (the queues are empty)."""
    last, since, stop = None, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < stop:
        now = [stats(server, m) for m in models]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


def run_load(server, ensemble: str, in_flight: int, timeout: float,
             rounds: int) -> Dict[str, Any]:
    """Send the rounds to ``ensemble``; what the client saw and the change of the server's
    counts (the drops are read from the log once the server has stopped: :func:`add_drops`)."""
    from towhee_rt.client import Client
    from towhee_rt.errors import DeadlineExceededError

    models = [ensemble] + sorted(m for m in server_models(server) if m.startswith(ensemble + "_"))
    images = image_bytes()
    sent, lock = [0], threading.Lock()

    def count(_record):
        with lock:
            sent[0] += 1

    outcome: Dict[str, Any] = {"delivered": 0, "gave_up": 0, "other_errors": 0}
    samples: List[str] = []
    with Client(server.grpc_url, model_name=ensemble, timeout=60.0) as warm:  # unhurried
        warm.infer(images[:4], concurrency=1)
    _drained(server, models, quiet_s=1.0)
    before = {m: stats(server, m) for m in models}
    started = time.monotonic()
    with Client(server.grpc_url, model_name=ensemble, timeout=timeout,
                on_request=count) as client:
        for r in range(rounds):
            items = [images[(r * in_flight + k) % len(images)] for k in range(in_flight)]
            for result in client.infer(items, concurrency=in_flight, errors="return"):
                if isinstance(result, DeadlineExceededError):
                    outcome["gave_up"] += 1
                elif isinstance(result, BaseException):
                    outcome["other_errors"] += 1
                    if len(samples) < 3:
                        samples.append(f"{type(result).__name__}: {result}"[:300])
                else:
                    outcome["delivered"] += 1
            _drained(server, models)
    load_s = time.monotonic() - started
    after = {m: stats(server, m) for m in models}
    counts = {m: {k: round(after[m][k] - before[m][k], 2) for k in after[m]} for m in models}
    return {"sent": sent[0], **outcome, "requests": rounds * in_flight,
            "load_s": round(load_s, 1), "ensemble_success": counts[ensemble]["success"],
            "stats": counts, "steps": models[1:], "error_samples": samples}


def server_models(server) -> List[str]:
    """The models in the server's repository."""
    return sorted(p.parent.name for p in Path(server.model_repository).glob("*/config.pbtxt"))


def add_drops(run: Dict[str, Any], log_text: str) -> Dict[str, Any]:
    """``run`` with each step's requests dropped past their deadline (the adapters' totals in
    the server log, written as the models unload), what the model step computed, and waste."""
    drops = {m: 0 for m in run["steps"]}
    for instance, number in _DROPS.findall(log_text):
        model = max((m for m in drops if instance.startswith(m)), key=len, default=None)
        if model is not None:
            drops[model] += int(number)
    model_step = run["steps"][-1]
    computed = run["stats"][model_step]["success"] - drops[model_step]
    return {**run, "dropped": drops, "computed": computed, "model_step": model_step,
            "wasted": computed - run["delivered"],
            "drop_log": [line for line in log_text.splitlines()
                         if "past their deadline since start" in line
                         and any(step in line for step in drops)]}


def render(results: Dict[str, Any]) -> str:
    """The markdown report."""
    args, rows = results["args"], results["runs"]
    lines = [
        "# Overload: work done for callers that gave up",
        "",
        f"`python -m bench.overload --in-flight {args['in_flight']} --timeout {args['timeout']} "
        f"--rounds {args['rounds']}`: {args['rounds']} rounds of {args['in_flight']} images all "
        f"in flight at once, one towhee_rt `Client(timeout={args['timeout']})`, pipeline "
        f"`cv2_rgb -> timm {MODEL}` (**random weights**, ONNX, served defaults) on the embedded "
        "tritonserver, loopback. After each round the server drains.",
        "",
        f"Machine: {machine_line(results['machine'])}; load before the run: "
        f"{results['load_before']}.",
        "",
        "| adapters | requests | sent | delivered | gave up | computed (model step) | "
        "dropped at their deadline (decode / model) | wasted = computed - delivered | "
        "wasted per round | target per round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    target = args["in_flight"] / 4
    for name, row in rows.items():
        dropped = " / ".join(str(v) for v in row["dropped"].values())
        per_round = row["wasted"] / args["rounds"]
        met = "met" if per_round <= target else "missed"
        lines.append(f"| {name} | {row['requests']} | {row['sent']} | {row['delivered']} | "
                     f"{row['gave_up']} | {row['computed']} | {dropped} | {row['wasted']} | "
                     f"{per_round:g} | <= {target:g}: {met} |")
    lines += [
        "",
        "*sent* counts the client's retries too (a busy answer is sent once more); *gave up*: "
        "items that failed with DeadlineExceededError, the rest of the items not delivered "
        "failed with ServerBusyError (a full queue, or a step that knew it could not finish "
        "them in time). "
        "*computed*: the model step's Triton `success` count less the requests it dropped past "
        "their deadline (Triton 2.51 counts a request a Python model answers with an error as a "
        "success; the drops are the adapters' own totals from the server log). The ensemble's "
        "`success` count (requests answered with results), per run: " + ", ".join(
            f"{n}: {r['ensemble_success']}" for n, r in rows.items()) + ". "
        "*control*: the same repository with the adapters' deadline check turned off (Triton's "
        "per-step queue timeouts only: each step gets the whole budget again), as before the "
        "deadline travelled with the request.",
        "",
        "Per-model counts (Triton statistics, change over the load):",
        "",
        "```",
        json.dumps({n: r["stats"] for n, r in rows.items()}, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=96)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-control", action="store_true",
                        help="skip the control run (deadline check off)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.in_flight < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--in-flight and --rounds must be >= 1, --timeout > 0")
    with open("/proc/loadavg") as f:
        load_before = " ".join(f.read().split()[:3])
    import towhee_rt as towhee

    runs: Dict[str, Any] = {}
    started = time.monotonic()
    names = {SHIPPED: "shipped (deadline travels)", CONTROL: "control (per-step timeouts only)"}
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        repo, log = build(Path(tmp) / "repo"), Path(tmp) / "tritonserver.log"
        print(f"{time.monotonic() - started:.0f} s: built", flush=True)
        with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0,
                          log_file=log) as server:
            for ensemble in [SHIPPED] + ([] if args.no_control else [CONTROL]):
                runs[names[ensemble]] = run_load(server, ensemble, args.in_flight, args.timeout,
                                                 args.rounds)
                print(f"{time.monotonic() - started:.0f} s: {ensemble} sent", flush=True)
        text = log.read_text(errors="replace")
    for name in runs:
        runs[name] = add_drops(runs[name], text)
        print(name, {k: v for k, v in runs[name].items() if k not in ("stats", "drop_log")})
    results = {"args": {"in_flight": args.in_flight, "timeout": args.timeout,
                        "rounds": args.rounds},
               "machine": machine_info(), "load_before": load_before, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overload.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "overload.md").write_text(render(results))
    print(f"wrote {args.out / 'overload.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
