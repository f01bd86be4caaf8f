"""First request after readiness vs the steady state, with and without the models' warm-up.

    python -m bench.warmup [--model-name resnet50] [--requests 12] [--rounds 2]

Serves ``image_decode.cv2_rgb -> image_embedding.timm`` (ONNX, default instances) on the
embedded tritonserver and times single requests one after the other as soon as the server says
ready. "without" patches the generated repository's copy of the operator base so that
``warmup_items()`` returns nothing (towhee_rt itself is never modified). Writes
``bench/results/warmup.md``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from .common import RESULTS_DIR, machine_info, machine_line

IMAGE = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "images" / "good" / \
    "chelsea.jpg"
_SAMPLE = "        return [tuple(sample(spec) for spec in self.inputs)]"
_JPEG = "        return [(encoded.tobytes(),)]"


def _disable_warmup(repo: Path) -> None:
    for path in repo.glob("*/1/towhee_ops/*.py"):
        text = path.read_text()
        path.write_text(text.replace(_SAMPLE, "        return []").replace(
            _JPEG, "        return []"))


def measure(model_name: str, requests: int, warmup: bool) -> Dict[str, float]:
    """Seconds to ready and per-request milliseconds right after readiness."""
    import towhee_rt as towhee

    pipe = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name=model_name, pretrained=False).as_function())
    with tempfile.TemporaryDirectory(prefix="bench-warmup-") as tmp:
        repo = towhee.build_model_repo(pipe, Path(tmp) / "repo")
        if not warmup:
            _disable_warmup(repo.path)
        start = time.perf_counter()
        with towhee.serve(repo.path, grpc_port=0, http_port=0, metrics_port=0) as server:
            ready = time.perf_counter() - start
            latencies: List[float] = []
            with towhee.Client(server.grpc_url) as client:
                for _ in range(requests):
                    t0 = time.perf_counter()
                    client.infer([str(IMAGE)])
                    latencies.append((time.perf_counter() - t0) * 1000)
    return {"ready_s": ready, "first_ms": latencies[0], "second_ms": latencies[1],
            "steady_ms": statistics.median(latencies[2:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name", default="resnet50")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        for warmup in (True, False):
            result = measure(args.model_name, args.requests, warmup)
            rows.append((round_ + 1, "with" if warmup else "without", result))
            print(rows[-1], flush=True)
    lines = [f"# Warm-up: first request after readiness ({args.model_name}, ONNX, defaults)", "",
             machine_line(machine_info()), "",
             f"Command: `python -m bench.warmup --model-name {args.model_name} --requests "
             f"{args.requests} --rounds {args.rounds}`", "",
             "| round | warm-up | ready after (s) | 1st request (ms) | 2nd (ms) | "
             "median of the rest (ms) |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r} | {w} | {m['ready_s']:.1f} | {m['first_ms']:.0f} | {m['second_ms']:.0f} | "
              f"{m['steady_ms']:.0f} |" for r, w, m in rows]
    (RESULTS_DIR / "warmup.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
