"""Fixtures of the pytest-benchmark suites (``python -m pytest bench/ --benchmark-only``).

The normal test run never collects this directory (``testpaths = tests`` in setup.cfg).
Servers are started once per module and parameter, on free loopback ports, and always stopped.
"""
from __future__ import annotations

import logging
import os
import warnings

import pytest

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # pip install 'towhee_rt[bench]'
    collect_ignore_glob = ["test_bench_*.py"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")
logging.getLogger("towhee_rt").setLevel(logging.ERROR)

#: Items per benchmarked call: small enough for 2 cores, large enough to batch.
ITEMS = 24
ROUNDS = 3


def record_rate(benchmark, items: int) -> None:
    """Store items/s (from the median round) in the benchmark's extra_info."""
    benchmark.extra_info["items"] = items
    try:
        median = benchmark.stats.stats.median
        benchmark.extra_info["items_per_s"] = round(items / median, 2)
    except AttributeError:  # benchmarks disabled (--benchmark-disable)
        pass


@pytest.fixture(scope="session")
def onnx_pipes():
    """One towhee_rt ONNX pipeline per pipeline name (exported and parity-checked once)."""
    from .common import build_pipeline

    cache = {}

    def get(pipeline: str):
        if pipeline not in cache:
            cache[pipeline] = build_pipeline(pipeline, "onnx")
        return cache[pipeline]

    yield get
    for pipe in cache.values():
        pipe.close()
