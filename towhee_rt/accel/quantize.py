"""CPU int8: ONNX Runtime quantization of the exported model, behind an accuracy gate.

Each model kind has a list of quantization recipes, fastest first. Image models (float inputs)
start with static quantization (QDQ, per-channel int8 weights, uint8 activations) calibrated on
the user's samples, passed through the pipeline's own operators up to the model; text models
(integer token inputs) with dynamic quantization; image models try dynamic quantization of
their MatMul/Gemm weights second (vision transformers, which static QDQ quantizes too coarsely).
Both fall back to int8 MatMul weights in blocks with int8 compute (``MatMulNBits``), whose
per-block activation scales survive the outlier features of transformers that per-tensor
activation scales do not. The static recipes leave shape arithmetic in fp32, and a layer-wise
fallback recipe keeps the most sensitive nodes of a CNN in fp32, found by measuring
(:mod:`.int8_fallback`). The first recipe that passes the accuracy gate (:mod:`.accuracy_gate`:
min cosine ``int8_min_cosine``, default 0.99, or search-neighbour agreement) with the
calibration samples as queries is then checked on the held-out samples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..backends.model_operator import ModelOperator
from ..backends.format_runners import OnnxRunner, Runner
from ..errors import FormatError
from . import cache, int8_fallback
from .accuracy_gate import AccuracyGate, Verdict, judge

log = logging.getLogger("towhee_rt")
DEFAULT_MIN_COSINE = 0.99
#: Random inputs used when the user gives no calibration samples (with a warning).
RANDOM_SAMPLES = 12
#: Block sizes of the blockwise recipe, fastest (least accurate) first. MiniLM on 2 cores,
#: one thread: 275/250/226 sentences/s vs 168 in fp32, min cosine 0.993/0.997/0.998 on short
#: sentences, where per-tensor dynamic quantization (454 sentences/s) fell to 0.969.
BLOCK_SIZES = (128, 64, 32)
ModelBatch = Dict[str, np.ndarray]
#: Part of every quantized file's cache key: what changes how the recipes make their files (v2:
#: shape arithmetic left in fp32; the fallback's bounds).
RECIPE_VERSION = (f"v2-fallback{int8_fallback.MAX_NODES}x{int8_fallback.MAX_TRIALS}"
                  f"t{int8_fallback.TIME_BUDGET_S:g}")


def split_samples(batches: Sequence[ModelBatch]) -> Tuple[List[ModelBatch], List[ModelBatch]]:
    """Calibration and held-out sets: every third sample is held out (at least one)."""
    if len(batches) < 2:
        raise FormatError("onnx_int8 needs at least 2 calibration samples (one is held out to "
                          f"check accuracy); got {len(batches)}")
    held = [b for i, b in enumerate(batches) if i % 3 == 2] or [batches[-1]]
    calibration = [b for b in batches if not any(b is h for h in held)]
    return calibration, held


def random_samples(op: ModelOperator, count: int = RANDOM_SAMPLES) -> List[ModelBatch]:
    """Random model inputs, one per sample (the fallback when no samples are given)."""
    rng = np.random.default_rng(0)
    return [op.example_inputs(1, rng) for _ in range(count)]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One way to quantize: a cache name, a description for the logs and the repository, and
    ``apply(prepared fp32 file, target file, calibration batches)``."""

    name: str
    description: str
    apply: Callable[[Path, Path, Sequence[ModelBatch]], None]
    #: Whether the file depends on the calibration data (static activation ranges).
    calibrated: bool = False


def recipes(op: ModelOperator) -> List[Recipe]:
    """The recipes tried for ``op``, fastest first (measured on resnet50 and MiniLM, 2 cores).

    Float inputs (images) start with static QDQ (every Conv and MatMul in int8), then dynamic
    per-channel MatMul/Gemm weights: vision transformers, which static QDQ quantizes too
    coarsely (CLIP ViT-B/32: 0.979), keep > 0.999 with it and run 1.5-1.7x faster than with
    the blockwise recipe (bench/results/perf_study.md). Token inputs (text) start with dynamic
    MatMul quantization. All then fall back to the blockwise MatMul recipe.
    """
    dynamic = Recipe("dynamic-matmul-per-channel", "dynamic, per-channel int8 MatMul weights",
                     lambda src, dst, _: _quantize_dynamic(src, dst))
    if any(spec.dtype.startswith("float") for spec in op.model_inputs()):
        first = [Recipe("static-qdq-per-channel", "static QDQ, per-channel int8 weights, uint8 "
                        "activations", _quantize_static, calibrated=True),
                 Recipe("static-qdq-per-channel-fallback", "static QDQ, per-channel int8 "
                        "weights, uint8 activations, the most sensitive nodes measured and kept "
                        "in fp32", lambda src, dst, cal: _quantize_static(src, dst, cal,
                                                                          fallback=True),
                        calibrated=True),
                 Recipe("static-qdq-symmetric", "static QDQ, per-channel int8 weights, "
                        "symmetric int8 activations",
                        lambda src, dst, cal: _quantize_static(src, dst, cal, symmetric=True),
                        calibrated=True),
                 Recipe("dynamic-matmul-gemm-per-channel", "dynamic, per-channel int8 "
                        "MatMul/Gemm weights",
                        lambda src, dst, _: _quantize_dynamic(src, dst, ("MatMul", "Gemm")))]
    else:
        first = [dynamic]
    return first + [
        Recipe(f"blockwise-int8-{block}", f"int8 MatMul weights in blocks of {block}, int8 "
               "compute (MatMulNBits)",
               lambda src, dst, _, block=block: _quantize_blockwise(src, dst, block))
        for block in BLOCK_SIZES]


def quantize(recipe: Recipe, fp32_onnx: Path, calibration: Sequence[ModelBatch],
             prepared: Callable[[], Path]) -> Path:
    """The int8 ONNX file made by ``recipe`` (cached by fp32 model, recipe and calibration).

    ``prepared()`` gives the pre-processed fp32 model; it is called only on a cache miss.
    """
    digest = hashlib.sha256()
    if recipe.calibrated:
        for batch in calibration:
            for name in sorted(batch):
                digest.update(np.ascontiguousarray(batch[name]).tobytes())
    key = cache.cache_key(fp32=fp32_onnx.name,
                          method=f"{recipe.name}+preprocessed+{RECIPE_VERSION}",
                          calibration=digest.hexdigest(),
                          versions=cache.library_versions(["onnxruntime"]))
    return cache.cached_file("onnx_int8", key, ".onnx",
                             lambda target: recipe.apply(prepared(), target, calibration))


class _Prepared:
    """The pre-processed fp32 model in ``workdir``, made on first use and then reused."""

    def __init__(self, source: Path, workdir: Path):
        self._source, self._path = source, workdir / "prepared.onnx"

    def __call__(self) -> Path:
        if not self._path.exists():
            _prepare(self._source, self._path)
        return self._path


def _prepare(source: Path, target: Path) -> None:
    """ONNX Runtime's pre-quantization pass: graph clean-up (ORT's basic optimizer) and ONNX
    shape inference.

    Not optional in practice: the torch exporter shares repeated initializers through
    ``Identity`` nodes, and a QDQ Conv whose weight or bias arrives through one is not fused
    into ``QLinearConv`` and runs as fp32 with per-call dequantization. On resnet50 only 7 of
    53 Convs were fused without this pass, and int8 ran slower than fp32 (11 vs 13 img/s on
    one thread); with it all 53 are fused (45 img/s). Symbolic shape inference is skipped: the
    clean-up does not need it, and where it fails (MiniLM) it leaves a copy of the model and
    its weights in the current directory.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


def _quantize_static(source: Path, target: Path, calibration: Sequence[ModelBatch],
                     symmetric: bool = False, fallback: bool = False) -> None:
    """Static QDQ with MinMax ranges; shape arithmetic stays in fp32
    (:func:`int8_fallback.shape_arithmetic_nodes`). ``symmetric``: int8 activations with ranges
    symmetric around 0. ``fallback``: the most sensitive nodes are measured and kept in fp32
    (:func:`int8_fallback.with_fallback`); :class:`FormatError` when none helps (the file would
    be the plain recipe's).

    On EfficientNet-Lite0's ImageNet weights (issue 20; the 12 test photos, min cosine to fp32)
    uint8 activations reach 0.870 with the 'same'-padding arithmetic quantized and 0.972 without;
    symmetric int8 activations 0.977 but run at half the speed (one thread, batch 8,
    interleaved, other load on the 2 cores: 74 vs 39 img/s, fp32 42). ORT's Entropy/Percentile calibration, CalibMovingAverage, reduce_range, mirrored
    copies of the calibration images and excluding whole groups (first/last, depthwise Convs)
    were not better (bench/results/quality.md, docs/formats.md)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            return next(self._batches, None)

    shape_nodes = int8_fallback.shape_arithmetic_nodes(onnx.load(str(source)))

    def run(path: Path, exclude: Sequence[str]) -> None:
        quantize_static(str(source), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        nodes_to_exclude=shape_nodes + list(exclude),
                        extra_options={"ActivationSymmetric": True} if symmetric else None)

    if not fallback:
        run(target, [])
        return
    ops = [node.op_type for node in onnx.load(str(source), load_external_data=False).graph.node]
    if ops.count("Conv") <= ops.count("MatMul") + ops.count("Gemm"):
        raise FormatError("layer-wise fallback is for convolutional models (transformers go to "
                          "the dynamic recipe)")
    kept, best = int8_fallback.with_fallback(run, source, list(calibration), target)
    if not kept:
        raise FormatError("layer-wise fallback: keeping no single sensitive node in fp32 raised "
                          "the min cosine on the calibration samples")
    log.info("onnx_int8 fallback: %d node(s) kept in fp32 (%s): min cosine %.4f on the "
             "calibration samples", len(kept), ", ".join(kept), best)


def _quantize_blockwise(source: Path, target: Path, block_size: int) -> None:
    import onnx

    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = _import_nbits_quantizer()
    # accuracy_level 4: activations quantized to int8 per block at run time (VNNI kernels).
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True,
                                          accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=8, block_size=block_size,
                                     is_symmetric=True, accuracy_level=4, algo_config=config)
    quantizer.process()
    if not any(node.op_type == "MatMulNBits" for node in quantizer.model.model.graph.node):
        raise FormatError("no MatMul with constant weights to quantize")
    quantizer.model.save_model_to_file(str(target), False)


def _import_nbits_quantizer():
    """ONNX Runtime's MatMulNBits quantizer, without the root-logger setup its import does.

    The module calls ``logging.basicConfig(level=INFO)`` on import (and then logs every node):
    the root logger's handlers and level are restored and the module's logger is quietened.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer as module
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logging.getLogger(module.__name__).setLevel(logging.WARNING)
    return module.DefaultWeightOnlyQuantConfig, module.MatMulNBitsQuantizer


def _quantize_dynamic(source: Path, target: Path, op_types: Sequence[str] = ("MatMul",)
                      ) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights of op_types only: quantizing the embedding Gather as well costs
    # MiniLM about 0.035 of cosine to fp32 (0.956 vs 0.992 on our test sentences).
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=list(op_types))
    import onnx

    if not any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear")
               for node in onnx.load(str(target), load_external_data=False).graph.node):
        raise FormatError(f"no {'/'.join(op_types)} with constant weights to quantize")


def min_cosine(candidate: Runner, batches: Sequence[ModelBatch],
               expected: Sequence[np.ndarray]) -> float:
    """The smallest cosine similarity between ``candidate``'s outputs on ``batches`` and
    ``expected`` (the fp32 model's outputs on the same batches)."""
    worst = 1.0
    for batch, want in zip(batches, expected):
        a = np.asarray(candidate.run(batch), dtype=np.float64)
        b = np.asarray(want, dtype=np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                          1e-12)
        worst = min(worst, float(cos.min()))
    return worst


@dataclasses.dataclass
class Int8Model:
    """The gated int8 model: its file, a runner, the recipe, the held-out min cosine and the
    gate's verdict."""

    path: Path
    runner: OnnxRunner
    recipe: Recipe
    min_cosine: float
    verdict: Verdict


def mirrored(batches: Sequence[ModelBatch]) -> List[ModelBatch]:
    """Each batch with its images mirrored left-right (float inputs of rank 4, NCHW), for the
    neighbour gate's pool; ``[]`` when the inputs are not images."""
    out = []
    for batch in batches:
        if not all(np.asarray(v).ndim == 4 and np.asarray(v).dtype.kind == "f"
                   for v in batch.values()):
            return []
        out.append({k: np.ascontiguousarray(np.asarray(v)[..., ::-1]) for k, v in batch.items()})
    return out


def _outputs(runner: Runner, batches: Sequence[ModelBatch]) -> List[np.ndarray]:
    return [np.asarray(runner.run(batch)) for batch in batches]


def int8_runner(op: ModelOperator, fp32_onnx: Path, samples: Sequence[ModelBatch],
                threshold: float = DEFAULT_MIN_COSINE,
                gate: "AccuracyGate | None" = None) -> Int8Model:
    """The fastest recipe that passes ``gate`` (default: min cosine ``threshold``) with the
    calibration samples as queries, then gated on the held-out ones; :class:`FormatError` with
    the reasons when none does.

    The neighbour gate (``topk_agreement``) judges each query among all samples' outputs, plus
    their mirror images for image models (more items, and each one's near-duplicate)."""
    gate = gate or AccuracyGate("min_cosine", threshold)
    calibration, held_out = split_samples(samples)
    pool = list(calibration) + list(held_out)
    cal_idx = list(range(len(calibration)))
    held_idx = list(range(len(calibration), len(pool)))
    if gate.metric == "topk_agreement":
        flips = mirrored(pool)
        pool += flips
        if flips:
            cal_idx += [len(samples) + i for i in cal_idx]
            held_idx += [len(samples) + i for i in held_idx]
    reference = OnnxRunner(str(fp32_onnx))
    expected = _outputs(reference, pool)
    tried: List[str] = []
    best: Tuple[float, str] = (-1.0, "")
    figure = "min cosine" if gate.metric == "min_cosine" else f"top-{gate.k} agreement"
    with tempfile.TemporaryDirectory(prefix="towhee_rt-int8-") as workdir:
        prepared = _Prepared(fp32_onnx, Path(workdir))
        for recipe in recipes(op):
            try:
                path = quantize(recipe, fp32_onnx, calibration, prepared)
                runner = OnnxRunner(str(path), fmt="onnx_int8")
                got = _outputs(runner, pool)
                first = judge(gate, got, expected, cal_idx)
            except Exception as exc:  # noqa: BLE001 - e.g. an onnxruntime without the operator
                tried.append(f"{recipe.name}: {str(exc).splitlines()[0][:200]}")
                continue
            value = first.min_cosine if gate.metric == "min_cosine" else first.agreement
            best = max(best, (value, recipe.name))
            if not first.passed:
                tried.append(f"{recipe.name}: {figure} {value:.4f} on calibration samples")
                log.info("%s: onnx_int8 recipe %s below the gate (%s %.4f); trying the next",
                         op.name, recipe.name, figure, value)
                continue
            verdict = judge(gate, got, expected, held_idx)
            if not verdict.passed:
                raise FormatError(f"accuracy gate failed: {verdict.text()} ({recipe.description})")
            return Int8Model(path, runner, recipe, verdict.min_cosine, verdict)
    lead = (f"best: {best[1]}, {figure} {best[0]:.4f}; " if best[1] else "")
    raise FormatError(f"accuracy gate failed: no int8 recipe keeps {gate.describe()} "
                      f"({lead}{'; '.join(tried)})")
