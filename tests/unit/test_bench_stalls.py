"""bench.stalls: stall detection, its classification, and the experiment patch of model.py.

Timelines are built by hand with known gaps, and the expected stalls written out beside them.
"""
from __future__ import annotations

import gc
import importlib.util

import pytest

from bench import stalls
from bench.stalls import classify, find_stalls, summarize
from bench.stalls_probe import Request

MS = 1_000_000


def _req(i, send_ms, recv_ms):
    return Request(index=i, worker=i, send_ns=send_ms * MS, recv_ns=recv_ms * MS)


def test_a_gap_with_requests_in_flight_is_a_stall_and_shorter_gaps_are_not():
    # Completions at 100, 200, 300, then nothing until 900 (600 ms), then 1000.
    requests = [_req(0, 0, 100), _req(1, 0, 200), _req(2, 100, 300), _req(3, 200, 900),
                _req(4, 300, 900), _req(5, 900, 1000)]
    out = find_stalls(requests, gap=0.3)
    assert [(s["start_ns"] // MS, s["end_ns"] // MS, s["ms"]) for s in out] == [(300, 900, 600)]
    # Requests 3 and 4 were in flight across the gap; 5 was sent at its end.
    assert sorted(out[0]["indices"]) == [3, 4]
    assert out[0]["waiting_ms"] == [600, 700]


def test_threshold_is_strict_and_configurable():
    requests = [_req(0, 0, 100), _req(1, 0, 400), _req(2, 100, 750)]
    assert [s["ms"] for s in find_stalls(requests, gap=0.3)] == [350]  # 400 -> 750
    assert find_stalls(requests, gap=0.35) == []  # 350 ms is not more than 350 ms
    assert [s["ms"] for s in find_stalls(requests, gap=0.2)] == [300, 350]


def test_the_first_wait_counts_from_the_first_send():
    requests = [_req(0, 0, 500), _req(1, 0, 550)]
    assert [(s["start_ns"] // MS, s["ms"], s["in_flight"]) for s in find_stalls(requests)] \
        == [(0, 500, 2)]


def test_no_requests_no_stalls():
    assert find_stalls([]) == []


@pytest.mark.parametrize("cpu, expected", [
    ({"machine": 0.3, "tritonserver": 0.1, "foreign": 0.2}, "real stall"),
    ({"machine": 2.0, "stub a": 0.2, "foreign": 1.6}, "CPU starvation"),
    ({"machine": 1.9, "stub a": 1.5, "foreign": 0.4}, "busy (our processes)"),
    ({}, "unknown"),
])
def test_classify_separates_idle_stalls_from_starvation(cpu, expected):
    assert classify(cpu, cores=2).startswith(expected)


def test_summary_figures():
    requests = [_req(i, 0, 100) for i in range(98)] + [_req(98, 0, 1500), _req(99, 0, 200)]
    s = summarize(requests)
    assert (s["requests"], s["failed"], s["p50_ms"], s["max_ms"], s["over_1s"]) == \
        (100, 0, 100.0, 1500.0, 1)
    assert s["p99_ms"] > 200  # the 1.5 s request is inside the top percent


def test_gc_patch_logs_full_collections_and_freezes(tmp_path, monkeypatch):
    """The experiment appended to model.py copies: it logs a generation-2 collection, and the
    freeze variant wraps initialize() so that the objects alive after it are frozen."""
    model_dir = tmp_path / "m" / "1"
    model_dir.mkdir(parents=True)
    (model_dir / "model.py").write_text(
        "import os\nimport time\n\n\nclass TritonPythonModel:\n"
        "    def initialize(self, args):\n        self.loaded = [object() for _ in range(10)]\n")
    stalls.patch_stubs(tmp_path, "freeze")
    log = tmp_path / "gc.log"
    monkeypatch.setenv("TOWHEE_STALLS_GC_LOG", str(log))
    spec = importlib.util.spec_from_file_location("patched_model", model_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        frozen_before = gc.get_freeze_count()
        module.TritonPythonModel().initialize({})
        assert gc.get_freeze_count() > frozen_before
        gc.collect()
        entries = stalls.read_gc_log(log)
        assert entries and all(e[3] == 2 for e in entries)
    finally:
        gc.callbacks[:] = [cb for cb in gc.callbacks
                           if getattr(cb, "__name__", "") != "_stalls_gc_callback"]
        gc.unfreeze()


def test_preferred_batch_patch_touches_the_model_step_only(tmp_path):
    """The batching experiment writes preferred_batch_size into the last step's batcher, and
    leaves the ensemble and the other steps as they were."""
    steps = {"pipeline": "ensemble_scheduling {\n}\n",
             "pipeline_0_decode": "dynamic_batching {\n  max_queue_size: 64\n}\n",
             "pipeline_1_embed": "dynamic_batching {\n  max_queue_size: 64\n}\n"}
    for name, text in steps.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(text)
    assert stalls.patch_preferred_batch(tmp_path, 1) == "pipeline_1_embed"
    assert (tmp_path / "pipeline_1_embed" / "config.pbtxt").read_text() == \
        "dynamic_batching {\n  preferred_batch_size: 1\n  max_queue_size: 64\n}\n"
    for name in ("pipeline", "pipeline_0_decode"):
        assert (tmp_path / name / "config.pbtxt").read_text() == steps[name]
