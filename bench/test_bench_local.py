"""In-process systems: the HF-style loop, towhee_rt ``as_function()``, ONNX Runtime alone."""
from __future__ import annotations

import numpy as np
import pytest

from .baselines import hf_embedder, ort_session, preprocessed_batches
from .common import PIPELINES, build_pipeline, items_for, onnx_model_file
from .conftest import ITEMS, ROUNDS, record_rate


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_hf_baseline(benchmark, pipeline):
    """PIL decode + the library's preprocessing + eager torch, one item at a time."""
    embed = hf_embedder(pipeline)
    items = items_for(pipeline, ITEMS)
    embed(items[0])
    benchmark.pedantic(lambda: [embed(item) for item in items], rounds=ROUNDS, iterations=1)
    record_rate(benchmark, len(items))


@pytest.mark.parametrize("fmt", ["torch", "onnx"])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_towhee_rt_local(benchmark, pipeline, fmt, onnx_pipes):
    """``pipe(items)``: the local runner, chunks of 8, the given model format."""
    pipe = onnx_pipes(pipeline) if fmt == "onnx" else build_pipeline(pipeline, "torch")
    items = items_for(pipeline, ITEMS)
    pipe(items[:8])
    try:
        results = benchmark.pedantic(pipe, args=(items,), rounds=ROUNDS, iterations=1)
    finally:
        if fmt == "torch":
            pipe.close()
    assert len(results) == len(items)
    record_rate(benchmark, len(items))


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_onnx_ceiling(benchmark, pipeline, batch_size, onnx_pipes):
    """ONNX Runtime alone (2 intra-op threads) on already preprocessed batches."""
    pipe = onnx_pipes(pipeline)
    session = ort_session(onnx_model_file(pipe), threads=2)
    names = [i.name for i in session.get_inputs()]
    batches = preprocessed_batches(pipe, items_for(pipeline, ITEMS), batch_size)
    feeds = [{n: np.ascontiguousarray(b[n]) for n in names} for b in batches]
    session.run(None, feeds[0])
    benchmark.pedantic(lambda: [session.run(None, f) for f in feeds], rounds=ROUNDS,
                       iterations=1)
    record_rate(benchmark, ITEMS)
