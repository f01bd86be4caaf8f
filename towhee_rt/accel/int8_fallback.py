"""Static int8 quantization helpers: what must stay out of quantization, and layer-wise fallback.

Two measured fixes for CNNs on real weights (issue 20, EfficientNet-Lite0 ImageNet weights, 12
photos, min cosine of the outputs to fp32 on the calibration samples):

* :func:`shape_arithmetic_nodes`: timm's ``tf_`` models pad 'same' at run time: a subgraph of
  ``Shape -> Gather -> Cast -> Div -> Ceil -> Sub -> Mul -> Max/Clip -> Pad`` computes the pads
  from the input's shape. Quantized like activations, those few float scalars round, the pads
  come out a pixel off (a 14x14 feature map became 12x12) and every later
  layer sees shifted features: 0.870 -> 0.972 with the subgraph left in fp32, at the same speed.
* :func:`with_fallback`: keep the few most sensitive Conv/Gemm/MatMul nodes in fp32, found by
  measuring: one run with intermediate outputs ranks each node by how much signal-to-noise it
  loses against fp32 (its output's SQNR minus its input's); then the top candidates are tried one
  at a time (re-quantizing with them excluded) and an exclusion is kept only when the min cosine
  on the calibration samples improves. Bounded by a number of trials, of nodes kept and a time.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

log = logging.getLogger("towhee_rt")
#: Nodes whose weights the fallback may keep in fp32.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
#: Defaults of :func:`with_fallback`: nodes kept in fp32, candidates tried, seconds.
MAX_NODES = 3
MAX_TRIALS = 6
TIME_BUDGET_S = 60.0
#: Samples the ranking run uses (it keeps every intermediate tensor of both models).
RANKING_SAMPLES = 2
ModelBatch = Dict[str, np.ndarray]


def shape_arithmetic_nodes(model) -> List[str]:
    """Names of the nodes of ``model`` (an ``onnx.ModelProto``) that do not compute on the input
    data: shape arithmetic (``Shape`` and everything fed only by shapes and constants)."""
    data = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Shape" and any(name in data for name in node.input):
            data.update(node.output)
        else:
            names.append(node.name)
    return names


def min_cosine(outputs: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """The smallest row-wise cosine between ``outputs`` and ``expected`` (lists of 2-D arrays)."""
    worst = 1.0
    for a, b in zip(outputs, expected):
        a = np.asarray(a, np.float64).reshape(len(a), -1)
        b = np.asarray(b, np.float64).reshape(len(b), -1)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                          1e-12)
        worst = min(worst, float(cos.min()))
    return worst


def _session(model_or_path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = model_or_path if isinstance(model_or_path, (str, Path)) else \
        model_or_path.SerializeToString()
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, options,
                                providers=["CPUExecutionProvider"])


def run_model(path: Path, batches: Sequence[ModelBatch]) -> List[np.ndarray]:
    """The first output of the ONNX model at ``path`` on each batch (one thread)."""
    session = _session(str(path))
    return [session.run(None, dict(batch))[0] for batch in batches]


def _sqnr(reference: np.ndarray, value: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (capped at 80)."""
    noise = float(np.linalg.norm(reference.astype(np.float64) - value))
    signal = float(np.linalg.norm(reference.astype(np.float64)))
    return 80.0 if noise <= signal * 1e-4 else min(80.0, 20 * math.log10(signal / noise))


def rank_sensitive(fp32_path: Path, qdq_path: Path, batches: Sequence[ModelBatch],
                   exclude: Sequence[str] = ()) -> List[Tuple[List[str], float]]:
    """Conv/Gemm/MatMul nodes of the fp32 model, most damaging first: ``(names, dB lost)``
    (the node's name, and its activation's when the quantizer fuses one into it),
    the SQNR (quantized vs fp32) of the node's input minus that of its output, measured with
    both models' intermediate tensors on ``batches``."""
    import onnx

    from onnxruntime.quantization.qdq_loss_debug import DEQUANT_OUTPUT_SUFFIX

    fp32 = onnx.load(str(fp32_path))
    qdq = onnx.load(str(qdq_path))
    produced = {o for n in qdq.graph.node for o in n.output} | {i.name for i in qdq.graph.input}
    consumers: Dict[str, List] = {}
    for node in fp32.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def quantized(name: str) -> str:
        """The tensor of the quantized model that stands for fp32's ``name``: its dequantized
        value where it was quantized, else the same tensor."""
        return name + DEQUANT_OUTPUT_SUFFIX if name + DEQUANT_OUTPUT_SUFFIX in produced else name

    pairs = []  # (node, input tensor, output tensor) of the fp32 model
    fused: Dict[str, str] = {}
    for node in fp32.graph.node:
        if node.op_type not in WEIGHTED_OPS or node.name in exclude:
            continue
        out = node.output[0]
        after = consumers.get(out, [])
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):  # fused with the node
            out = after[0].output[0]
        if quantized(node.input[0]) in produced and quantized(out) in produced:
            pairs.append((node.name, node.input[0], out))
            if out != node.output[0]:
                fused[node.name] = after[0].name
    graph_inputs = {i.name for i in fp32.graph.input}
    outputs: Dict[str, Dict[str, List[np.ndarray]]] = {}
    for label, model, rename in (("fp32", fp32, lambda t: t), ("qdq", qdq, quantized)):
        wanted = sorted({rename(t) for _, a, b in pairs for t in (a, b)} - graph_inputs)
        existing = {o.name for o in model.graph.output}
        for name in wanted:
            if name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        session = _session(model)
        got = [session.run(wanted, dict(b)) for b in batches]
        values = {t: [g[i] for g in got] for i, t in enumerate(wanted)}
        values.update({t: [b[t] for b in batches] for t in graph_inputs if t in batches[0]})
        outputs[label] = {t: values[rename(t)] for _, a, b in pairs for t in (a, b)}
    ranked = []
    for name, a, b in pairs:
        sqnr = {t: _sqnr(np.concatenate([x.ravel() for x in outputs["fp32"][t]]),
                         np.concatenate([x.ravel() for x in outputs["qdq"][t]])) for t in (a, b)}
        # A node goes to fp32 with its activation: quantizing the activation's input alone
        # adds a step on the wide pre-activation range (measured: worse than no fallback).
        ranked.append(([name] + ([fused[name]] if name in fused else []), sqnr[a] - sqnr[b]))
    return sorted(ranked, key=lambda r: -r[1])


def with_fallback(quantize: Callable[[Path, Sequence[str]], None], fp32_path: Path,
                  batches: Sequence[ModelBatch], target: Path, max_nodes: int = MAX_NODES,
                  max_trials: int = MAX_TRIALS, time_budget_s: float = TIME_BUDGET_S
                  ) -> Tuple[List[str], float]:
    """Quantize with ``quantize(path, extra nodes to exclude)`` and keep in fp32 the nodes whose
    exclusion measurably raises the min cosine to fp32 on ``batches``; writes the best model to
    ``target``. Returns the nodes kept in fp32 and the min cosine reached."""
    import shutil

    start = time.monotonic()
    expected = run_model(fp32_path, batches)
    with tempfile.TemporaryDirectory(prefix="towhee_rt-fallback-") as work:
        best_path = Path(work) / "best.onnx"
        quantize(best_path, [])
        best = min_cosine(run_model(best_path, batches), expected)
        ranked = rank_sensitive(fp32_path, best_path, batches[:RANKING_SAMPLES])
        kept: List[str] = []
        weighted = {names[0] for names, _ in ranked}
        for trial, (names, lost) in enumerate(ranked[:max_trials]):
            if len([n for n in kept if n in weighted]) >= max_nodes or \
                    time.monotonic() - start > time_budget_s:
                break
            candidate = Path(work) / f"trial{trial}.onnx"
            quantize(candidate, kept + names)
            score = min_cosine(run_model(candidate, batches), expected)
            log.debug("int8 fallback: %s in fp32 (%.1f dB lost): min cosine %.4f (best %.4f)",
                      names, lost, score, best)
            if score > best + 1e-4:
                kept, best = kept + names, score
                shutil.move(str(candidate), best_path)
        shutil.move(str(best_path), target)
    return kept, best
