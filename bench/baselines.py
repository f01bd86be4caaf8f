"""What users would write without towhee_rt: the HF-style loop, and ONNX Runtime alone.

* :func:`hf_baseline` — per item: PIL decode + the model library's own preprocessing + eager
  torch, batch 1 in a Python loop (timm ``resnet50`` with timm's data-config transform,
  open_clip ``ViT-B-32`` with its ``preprocess``, timm ``tf_efficientnet_lite0`` with its real
  ImageNet weights (``bench/real_weights.py``) and timm's transform, sentence-transformers
  MiniLM with ``SentenceTransformer.encode`` one sentence at a time).
* :func:`onnx_ceiling` — ONNX Runtime on already-decoded, already-preprocessed tensors, the
  best of several batch sizes, 2 intra-op threads: what the model alone can do here, and the
  process CPU time it takes per item.
"""
from __future__ import annotations

import io
import os
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from .common import ResultRow, time_loop
from .cpu_load import ForeignLoad

CEILING_BATCHES = (1, 4, 8, 16)


def hf_embedder(pipeline: str) -> Callable[[Any], np.ndarray]:
    """A function ``item -> vector`` doing what the model library's README does, batch 1."""
    import torch

    if pipeline == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from towhee_rt.backends.text_embedding import bundled_minilm_dir

        model = SentenceTransformer(bundled_minilm_dir(), device="cpu")
        return lambda text: model.encode(text)

    from PIL import Image

    if pipeline == "resnet50":
        import timm
        import timm.data

        model = timm.create_model("resnet50", pretrained=False, num_classes=0).eval()
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        forward = model
    elif pipeline == "lite0":  # the ImageNet weights, as a user loads a timm state dict
        import timm.data

        from . import real_weights

        model = real_weights.timm_model("lite0")
        model.reset_classifier(0)
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        forward = model
    elif pipeline == "clip":
        import open_clip

        model, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        model.eval()
        forward = model.encode_image
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}")

    def embed(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        with torch.inference_mode():
            return forward(transform(image).unsqueeze(0))[0].numpy()

    return embed


def hf_baseline(pipeline: str, items: Sequence[Any], warmup: int = 3) -> ResultRow:
    """items/s and per-item latency of the HF-style batch-1 loop."""
    import torch

    embed = hf_embedder(pipeline)
    for item in items[:warmup]:
        embed(item)
    load = ForeignLoad()
    seconds, latencies = time_loop(embed, items)
    return ResultRow("HF-style (torch eager, batch 1)", pipeline, len(items), seconds,
                       latencies, settings={"torch_threads": torch.get_num_threads()},
                       foreign_cores=load.cores())


# --------------------------------------------------------------------------- the ceiling
def preprocessed_batches(pipe, items: Sequence[Any], batch_size: int) -> List[Dict[str, np.ndarray]]:
    """Model-input arrays for ``items`` in batches, made by the pipeline's own operators."""
    model_op = pipe.operators[-1]
    model_op.ensure_setup()
    if len(pipe.operators) > 1:  # image pipelines: decode first
        decode = pipe.operators[0]
        decode.ensure_setup()
        images = decode.process_batch({decode.inputs[0].name: list(items)})
        items = images[decode.outputs[0].name]
    name = model_op.inputs[0].name
    return [model_op.preprocess({name: list(items[k:k + batch_size])})
            for k in range(0, len(items), batch_size)]


def ort_session(model_file: str, threads: int = 2):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (1 inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])


def onnx_ceiling(pipeline: str, pipe, model_file: str, items: Sequence[Any],
                 batch_sizes: Sequence[int] = CEILING_BATCHES, threads: int = 2,
                 min_seconds: float = 1.5, system: str = "ceiling: ONNX Runtime alone"
                 ) -> Tuple[ResultRow, List[ResultRow]]:
    """The best batch size of ONNX Runtime alone on preprocessed inputs, and every size tried.

    Each row's ``settings['cpu_ms_per_item']`` is the CPU time of this process (every
    ONNX Runtime thread, spinning included: ``time.process_time``) per item over its loop: what
    the model step alone costs, for the served rows' CPU budget (``bench/cpu_budget.py``).
    """
    session = ort_session(model_file, threads)
    names = [i.name for i in session.get_inputs()]
    tried = []
    for size in batch_sizes:
        batches = preprocessed_batches(pipe, items, size)
        feeds = [{n: np.ascontiguousarray(b[n]) for n in names} for b in batches]
        feeds = [f for f in feeds if len(next(iter(f.values()))) == size] or feeds
        session.run(None, feeds[0])  # warm-up
        count, latencies, load = 0, [], ForeignLoad()
        start, cpu_start = time.perf_counter(), time.process_time()
        while count == 0 or time.perf_counter() - start < min_seconds:
            for feed in feeds:  # whole passes over the items, at least min_seconds
                t0 = time.perf_counter()
                session.run(None, feed)
                latencies.append(time.perf_counter() - t0)
                count += len(next(iter(feed.values())))
        cpu_ms = (time.process_time() - cpu_start) * 1000.0 / count
        tried.append(ResultRow(system, pipeline, count,
                                 time.perf_counter() - start, latencies, items_per_request=size,
                                 settings={"batch_size": size, "intra_op_threads": threads,
                                           "cpu_ms_per_item": round(cpu_ms, 3)},
                                 foreign_cores=load.cores()))
    best = max(tried, key=lambda m: m.items_per_s)
    return best, tried
