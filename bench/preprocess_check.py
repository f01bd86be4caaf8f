"""The check behind ``preprocess='cv2'``: end-to-end cosine to the model's reference transform.

    python -m bench.preprocess_check [--out bench/results]

For resnet50 (timm) and CLIP ViT-B/32 (open_clip), on every good test image, the embeddings of

* the reference: full-size decode, the library's own transform (``preprocess='reference'``),
* ``cv2``: full-size decode, ``preprocess='cv2'`` in the model step,
* ``cv2 + decode``: ``image_decode.cv2_rgb(min_side=256, resize_crop=...)`` (reduced-scale JPEG
  decode, resize and crop in the decode step), ``preprocess='cv2'`` (what the bench's int8
  rows serve),

all through towhee_rt's local pipeline with the fp32 ONNX model. Reported: the min cosine of
each variant's embeddings to the reference's (the gate: >= 0.999), the min cosine of the model
inputs themselves (weight-independent), and, for scale, the mean cosine between different
images' reference embeddings (the bench's models have random weights: see ``common.py``).
Writes ``preprocess_check.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .common import RESULTS_DIR, build_pipeline, image_bytes, machine_info, machine_line
from .int8 import MIN_SIDE, RESIZE_CROP

GATE = 0.999


def variants(pipeline: str) -> Dict[str, Dict[str, Any]]:
    """Label -> ``build_pipeline`` keyword arguments."""
    return {
        "reference": {},
        "cv2": {"preprocess": "cv2"},
        "cv2 + decode min_side=256, resize_crop": {
            "preprocess": "cv2",
            "decode_params": {"min_side": MIN_SIDE, "resize_crop": RESIZE_CROP[pipeline]}},
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check(pipeline: str, images: List[bytes]) -> Dict[str, Any]:
    """The figures of one pipeline (see the module docstring)."""
    out: Dict[str, Any] = {}
    reference = reference_inputs = None
    for label, kwargs in variants(pipeline).items():
        pipe = build_pipeline(pipeline, "onnx", **kwargs)
        embeddings = np.stack(pipe(images))
        decode, model = pipe.operators[0], pipe.operators[1]
        decode.ensure_setup("cpu")
        decoded = [decode.process_batch({"image": [item]})["image"][0] for item in images]
        inputs = model.preprocess({"image": decoded})["image"]
        pipe.close()
        if reference is None:
            reference, reference_inputs = embeddings, inputs
            unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
            between = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
            out["mean_cosine_between_images"] = round(float(between.mean()), 4)
            continue
        cos = _cosines(embeddings, reference)
        out[label] = {"min_cosine": round(float(cos.min()), 5),
                      "mean_cosine": round(float(cos.mean()), 5),
                      "min_input_cosine": round(float(_cosines(inputs, reference_inputs).min()),
                                                5),
                      "meets_gate": bool(cos.min() >= GATE)}
    return out


def run(pipelines: List[str]) -> Dict[str, Any]:
    """The figures of ``pipelines`` on every good test image, with the machine stamp."""
    images = image_bytes()
    return {"machine": machine_info(), "images": len(images), "gate": GATE,
            "pipelines": {p: check(p, images) for p in pipelines}}


def markdown(results: Dict[str, Any]) -> str:
    lines = ["# preprocess='cv2' against the reference transform", "",
             f"- {machine_line(results['machine'])}",
             "- command: `.venv/bin/python -m bench.preprocess_check`",
             f"- {results['images']} good test images (`../shared/testdata/images/good`), "
             "encoded bytes; fp32 ONNX model, random weights (pretrained=False)",
             f"- gate: min end-to-end cosine to the reference >= {GATE}", "",
             "| pipeline | variant | min cosine | mean cosine | min cosine of model inputs "
             "| gate | between images (scale) |",
             "|---|---|---:|---:|---:|---|---:|"]
    for pipeline, figures in results["pipelines"].items():
        for label, row in figures.items():
            if not isinstance(row, dict):
                continue
            lines.append(f"| {pipeline} | {label} | {row['min_cosine']:.5f} | "
                         f"{row['mean_cosine']:.5f} | {row['min_input_cosine']:.5f} | "
                         f"{'met' if row['meets_gate'] else 'NOT met'} | "
                         f"{figures['mean_cosine_between_images']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preprocess_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--pipelines", default="resnet50,clip")
    args = parser.parse_args(argv)
    results = run(args.pipelines.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preprocess_check.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "preprocess_check.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
