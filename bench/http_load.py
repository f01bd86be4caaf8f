"""Client load for the peers that speak JSON over HTTP (Infinity, LitServe).

The towhee_rt and PyTriton rows are measured with ``towhee_rt.Client`` over gRPC; these peers
answer HTTP JSON, so this module sends the same items the same way: one item per request,
``concurrency`` requests in flight (one thread with one keep-alive connection each), every
request timed, and the point recorded as a :class:`bench.common.ResultRow` with the same
foreign-load and per-process CPU accounting as ``bench/served.py``.

Every load is bounded: a fixed list of items, a per-request timeout, and a cap on the size
of each response body read.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np

from .common import ResultRow, min_cosine
from .cpu_load import CpuSplit, ForeignLoad

#: The most bytes read from one response (an embedding is a few KiB of JSON).
MAX_BODY = 16 * 1024 * 1024
#: Seconds one request may take before the point fails.
REQUEST_TIMEOUT = 60.0
#: Every correctness check asks for cosine >= this to the fp32 reference.
MIN_COSINE = 0.99


class PeerHttpError(RuntimeError):
    """A peer answered with an HTTP error or a body that is not what its API documents."""


class HttpJsonClient:
    """POST one JSON body per item to ``url``; ``encode(item) -> dict``, ``decode(dict) -> vector``."""

    def __init__(self, url: str, encode: Callable[[Any], Dict[str, Any]],
                 decode: Callable[[Dict[str, Any]], np.ndarray],
                 timeout: float = REQUEST_TIMEOUT):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"expected http://host:port/path, got {url!r}")
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path or "/"
        self.encode, self.decode, self.timeout = encode, decode, timeout

    def _post(self, conn: http.client.HTTPConnection, item: Any) -> np.ndarray:
        body = json.dumps(self.encode(item)).encode("utf-8")
        conn.request("POST", self.path, body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        length = int(resp.getheader("Content-Length") or 0)
        if length > MAX_BODY:
            raise PeerHttpError(f"response of {length} bytes from {self.path} (limit {MAX_BODY})")
        data = resp.read(MAX_BODY + 1)
        if resp.status != 200:
            raise PeerHttpError(f"HTTP {resp.status} from {self.path}: {data[:300]!r}")
        return self.decode(json.loads(data))

    def infer(self, items: Sequence[Any], concurrency: int = 1
              ) -> Tuple[List[np.ndarray], List[float]]:
        """Send every item once, ``concurrency`` in flight; (vectors in item order, seconds per
        request in completion order). The first error stops the load and is raised."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        items = list(items)
        vectors: List[Optional[np.ndarray]] = [None] * len(items)
        latencies: List[float] = []
        errors: List[BaseException] = []
        lock = threading.Lock()
        position = iter(range(len(items)))

        def worker():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                while not errors:
                    with lock:
                        index = next(position, None)
                    if index is None:
                        return
                    t0 = time.perf_counter()
                    vector = self._post(conn, items[index])
                    seconds = time.perf_counter() - t0
                    with lock:
                        vectors[index] = vector
                        latencies.append(seconds)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                with lock:
                    errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(min(concurrency, max(1, len(items))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return vectors, latencies  # type: ignore[return-value]


def measure_http(system: str, pipeline: str, client: HttpJsonClient, items: Sequence[Any],
                 concurrency: int, settings: Optional[dict] = None,
                 warmup: Optional[int] = None) -> ResultRow:
    """One point: warm up, then send ``items`` one per request, ``concurrency`` in flight
    (what ``bench.served.measure_client`` does for the gRPC clients)."""
    client.infer(list(items[:warmup if warmup is not None else max(4, concurrency)]),
                 concurrency)
    load, split = ForeignLoad(), CpuSplit()
    start = time.perf_counter()
    _, latencies = client.infer(items, concurrency)
    seconds = time.perf_counter() - start
    return ResultRow(system, pipeline, len(items), seconds, latencies,
                     settings={"concurrency": concurrency, **(settings or {})},
                     foreign_cores=load.cores(), cpu_split=split.cores())


def fp32_reference(pipeline: str, items: Sequence[Any]) -> Tuple[List[Any], np.ndarray, str]:
    """(inputs, fp32 reference vectors, what the reference is), as ``bench/int8.py`` uses:
    sentence-transformers fp32 on held-out sentences for MiniLM; towhee_rt's local fp32 torch
    pipeline (same seeded weights as the exported ONNX file) on the test images."""
    if pipeline == "minilm":
        from .baselines import hf_embedder
        from .int8 import HELD_OUT_SENTENCES

        embed = hf_embedder(pipeline)
        return (list(HELD_OUT_SENTENCES), np.stack([embed(s) for s in HELD_OUT_SENTENCES]),
                "sentence-transformers fp32 on held-out sentences")
    from .common import build_pipeline

    pipe = build_pipeline(pipeline, "torch")
    try:
        reference = np.stack(pipe(list(items)))
    finally:
        pipe.close()
    return list(items), reference, "towhee_rt local fp32 torch on the test images"


def check_vectors(client: HttpJsonClient, inputs: Sequence[Any], reference: np.ndarray,
                  what: str) -> Dict[str, Any]:
    """The peer's vectors for ``inputs`` against ``reference``: min cosine and pass/fail."""
    vectors, _ = client.infer(inputs, concurrency=2)
    got = np.stack(vectors)
    cosine = round(min_cosine(got, reference), 4)
    return {"min_cosine": cosine, "passed": cosine >= MIN_COSINE, "reference": what,
            "items": len(inputs), "dim": int(got.shape[1])}


def check_note(check: Dict[str, Any]) -> str:
    """The correctness statement put on every row of a peer."""
    verdict = "ok" if check["passed"] else f"BELOW {MIN_COSINE}, not comparable"
    return (f"correctness: min cosine {check['min_cosine']} to {check['reference']} "
            f"({check['items']} items, {verdict})")


def wait_http_ok(url: str, deadline: float, alive: Callable[[], bool]) -> bool:
    """Poll ``GET url`` until it answers 200 (True), the deadline passes or ``alive()`` turns
    False (False)."""
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    return False
