"""The int8 rows: served ``onnx_int8`` pipelines, their ceiling, and what the server returns.

Throughput rows come from the same harness as the fp32 rows (``run.py``); this module adds the
settings and the accuracy checks of the served int8 output against fp32 references:

* images: towhee_rt's local pipeline with the torch format (the same seeded weights as the
  served model, eager fp32 torch, full-size decode) on the test images: the end-to-end effect
  of int8 *and* of the reduced-scale decode. (The HF-style embedder cannot serve as reference:
  its timm/open_clip weights are another random draw.)
* MiniLM: the served embeddings of sentences that are neither calibration nor bench inputs
  against ``SentenceTransformer.encode`` in fp32 (the real weights).

The accuracy gate's own figure (held-out calibration samples, fp32 ONNX vs int8 ONNX) is
recorded beside them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import numpy as np

from .common import min_cosine
from .served_config import ServedConfig

#: JPEGs at least twice this on their shorter side are decoded at 1/2, 1/4 or 1/8 scale; both
#: models resize the shorter side to at most 236 px, so they never upscale what was saved.
MIN_SIDE = 256
#: The decoder's ``resize_crop``: each model's own resize and crop (timm resnet50: 224 /
#: crop_pct 0.95 = 235; open_clip ViT-B/32: shorter side 224), so that the decode step hands
#: over the model-sized image and the model step only normalises (``preprocess='cv2'``,
#: checked by ``bench/preprocess_check.py``).
RESIZE_CROP = {"resnet50": [235, 224, 224], "clip": [224, 224, 224]}

#: The recommended int8 image server: reduced-scale decode, resize and crop in the decode step.
INT8_LABEL = ("int8 (onnx_int8) + decode min_side=256, resize_crop, preprocess='cv2', "
              "2 model instances x 1 thread")
INT8_TEXT = ServedConfig("int8 (onnx_int8), 2 model instances x 1 thread", format="onnx_int8")


def int8_image(pipeline: str) -> ServedConfig:
    """The recommended int8 settings of an image pipeline (measured in perf_study.md). CLIP adds
    dynamic batching: ViT-B/32 in int8 spent 38.6-39.6 instead of 41.3-43.6 ms of CPU per image
    with it; and, like resnet50, a second decode instance: with one, 0.3-0.5 of the 2 cores
    stayed idle and p99 reached 0.9-1.4 s at 16 in flight (2026-12-04, quiet, two interleaved
    rounds: 34.1/40.1 -> 43.1/46.8 img/s at 8 in flight, 32.6/36.2 -> 48.6/48.2 at 16; without
    dynamic batching 29.0-39.5)."""
    if pipeline == "clip":
        return ServedConfig(INT8_LABEL.replace("2 model", "dynamic batching, 2 decode + 2 model"),
                            format="onnx_int8", dynamic_batching=True, decode_instances=2,
                            decode_params=(("min_side", MIN_SIDE),
                                           ("resize_crop", RESIZE_CROP[pipeline])),
                            model_params=(("preprocess", "cv2"),))
    # resnet50 int8: a second decode instance keeps both cores busy (same CPU per image, 28.3
    # ms; 61-66 vs 47-56 img/s at 8-16 in flight, perf_study.md section 7).
    return ServedConfig(INT8_LABEL.replace("2 model", "2 decode + 2 model"), format="onnx_int8",
                        decode_instances=2,
                        decode_params=(("min_side", MIN_SIDE),
                                       ("resize_crop", RESIZE_CROP[pipeline])),
                        model_params=(("preprocess", "cv2"),))


#: Held-out sentences for the MiniLM accuracy check: not in ``common.SENTENCES`` (the bench
#: inputs, which also calibrate), of mixed length, with the short ones int8 finds hardest.
HELD_OUT_SENTENCES = [
    "Triton Inference Server serves models over gRPC and HTTP.",
    "Quantization trades a little accuracy for a lot of speed on CPUs.",
    "The weather today is sunny with a light breeze.",
    "Stock markets fell sharply after the announcement.",
    "Yes", "hi", "Sure thing.", "What time does the museum open on Sundays?",
    "A long sentence about nothing in particular, written to see whether the embedding of a "
    "rambling paragraph with many clauses stays close to its full-precision value.",
]


def int8_reference(pipeline: str) -> ServedConfig:
    """:func:`int8_image` with the model's reference preprocessing (no ``resize_crop``)."""
    fast = int8_image(pipeline)
    return dataclasses.replace(
        fast, label=fast.label.replace("resize_crop, preprocess='cv2'",
                                       "reference preprocessing"),
        decode_params=(("min_side", MIN_SIDE),), model_params=())


def int8_configs(pipeline: str, quick: bool = False) -> List[ServedConfig]:
    """The served int8 settings measured for ``pipeline`` (the first is the recommended one)."""
    if pipeline == "minilm":
        return [INT8_TEXT]
    if quick:
        return [int8_image(pipeline)]
    return [int8_image(pipeline), int8_reference(pipeline)]


def is_int8(config: ServedConfig) -> bool:
    return config.format == "onnx_int8"


def served_accuracy(pipeline: str, client, items: List[Any]) -> Dict[str, Any]:
    """Min cosine of the served embeddings to the fp32 reference (see the module docstring)."""
    if pipeline == "minilm":
        from .baselines import hf_embedder

        inputs = HELD_OUT_SENTENCES
        embed = hf_embedder(pipeline)
        reference = np.stack([embed(item) for item in inputs])
        what = "sentence-transformers fp32 on held-out sentences"
    else:
        from .common import build_pipeline

        inputs = list(items)
        pipe = build_pipeline(pipeline, "torch")
        reference = np.stack(pipe(inputs))
        pipe.close()
        what = "towhee_rt local fp32 torch (full-size decode) on the test images"
    served = np.stack(client.infer(inputs, mode="async_infer", concurrency=4))
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    between = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
    # The scale for the figure above: random-weight image models map different images to
    # vectors only ~0.07 of cosine apart, so 1 - min_cosine is best read against that.
    return {"min_cosine": round(min_cosine(served, reference), 4), "reference": what,
            "items": len(inputs), "mean_cosine_between_items": round(float(between.mean()), 4)}
