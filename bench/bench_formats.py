"""Local pipeline throughput per model format, measured in one run.

    python bench/bench_formats.py [--model resnet50] [--rounds 3] [--chunksize 8]

Builds the seed's ``image_decode.cv2_rgb -> image_embedding.timm`` pipeline once with the torch
format and once with ``format_priority=['tensorrt', 'onnx']`` (ONNX Runtime where there is no
TensorRT), runs both over the shared test images (one warm-up pass, then ``--rounds`` timed
passes, alternating so that machine noise hits both), and prints images/s and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "images" / "good"


def build(model: str, chunksize: int, format_priority=None, min_side=None):
    import towhee_rt as towhee

    builder = towhee.dummy_input().pipeline_config(chunksize=chunksize)
    if format_priority:
        builder = builder.pipeline_config(format_priority=format_priority)
    decode = {"min_side": min_side} if min_side else {}
    return builder.image_decode.cv2_rgb(**decode) \
        .image_embedding.timm(model_name=model, pretrained=False) \
        .as_function()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunksize", type=int, default=8)
    parser.add_argument("--min-side", type=int, default=None,
                        help="decode large JPEGs at reduced scale (cv2_rgb(min_side=...))")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    files = [str(p) for p in sorted(IMAGES.glob("*"))]
    pipes = {"torch": build(args.model, args.chunksize, min_side=args.min_side),
             "onnx": build(args.model, args.chunksize, ["tensorrt", "onnx"], args.min_side)}
    print({name: pipe.formats() for name, pipe in pipes.items()})
    reference = pipes["torch"](files)
    for name, pipe in pipes.items():  # warm-up, and the parity of the full pipeline
        got = pipe(files)
        err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(got, reference))
        print(f"{name}: max relative error vs torch on the test images {err:.1e}")
    seconds = {name: [] for name in pipes}
    for _ in range(args.rounds):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            pipe(files)
            seconds[name].append(time.perf_counter() - start)
    rates = {name: len(files) / float(np.median(s)) for name, s in seconds.items()}
    result = {
        "model": args.model, "images": len(files), "rounds": args.rounds,
        "chunksize": args.chunksize, "min_side": args.min_side, "images_per_s": rates,
        "onnx_over_torch": rates["onnx"] / rates["torch"],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "date": time.strftime("%Y-%m-%d")},
    }
    for name, rate in rates.items():
        print(f"{name:>6}: {rate:6.1f} images/s (median of {args.rounds})")
    print(f"onnx / torch = {result['onnx_over_torch']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
