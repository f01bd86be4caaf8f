"""The LitServe peer: the same ONNX model + the same preprocessing as the PyTriton peer.

What a user would write with LitServe (Lightning-AI) instead of towhee_rt, the way its docs
show: a ``LitAPI`` with ``setup`` (load the model once per worker), ``decode_request`` (JSON ->
item), ``predict`` (a batch in, a batch out), ``encode_response``; LitServe's own batching
(``max_batch_size`` / ``batch_timeout`` on the ``LitAPI``) and ``workers_per_device`` worker
processes on the CPU. ``predict`` runs ``bench.peer_pytriton.make_preprocess`` (cv2 decode +
the library's transform, or the tokenizer) and ONNX Runtime on the ONNX file towhee_rt
exported, so the two peers differ only in the serving layer. The ``LitAPI`` itself is in
``bench/litserve_api.py`` (LitServe's workers are spawned and import it by name).

Request: ``POST /predict`` with ``{"text": "..."}`` or ``{"image": "<base64 of the encoded
file>"}``; response ``{"embedding": [floats]}``. Run as a child process (:func:`start_peer`)::

    python -m bench.peer_litserve --pipeline minilm --onnx model.onnx --port 8111
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

API_PATH = "/predict"
MAX_BATCH = 16
BATCH_TIMEOUT_S = 0.002

#: (label, workers per device, ONNX Runtime intra-op threads per worker); the first is the
#: one measured by ``--quick``. Two 1-thread workers is what towhee_rt defaults to on CPU.
SETTINGS = (("2 workers x 1 thread", 2, 1), ("1 worker x 2 threads", 1, 2))


# ---------------------------------------------------------------- the wire format (pure)
def request_body(pipeline: str, item: Any) -> Dict[str, str]:
    """The JSON body for one item: text as is, an image as base64 of its encoded bytes."""
    if pipeline == "minilm":
        return {"text": item if isinstance(item, str) else bytes(item).decode("utf-8")}
    return {"image": base64.b64encode(bytes(item)).decode("ascii")}


def item_from_request(pipeline: str, request: Dict[str, Any]) -> bytes:
    """The server side of :func:`request_body`: the item as the bytes the preprocessing takes."""
    key = "text" if pipeline == "minilm" else "image"
    if not isinstance(request, dict) or not isinstance(request.get(key), str):
        raise ValueError(f"expected a JSON object with a string {key!r}")
    if key == "text":
        return request[key].encode("utf-8")
    return base64.b64decode(request[key], validate=True)


def vector_from_response(body: Dict[str, Any]) -> np.ndarray:
    """``{"embedding": [...]}`` -> a float32 vector."""
    if not isinstance(body, dict) or not isinstance(body.get("embedding"), list):
        raise ValueError(f"expected {{'embedding': [...]}}, got {str(body)[:200]}")
    return np.asarray(body["embedding"], dtype=np.float32)


def serve(pipeline: str, model_file: str, port: int, workers: int, threads: int,
          max_batch_size: int, batch_timeout: float) -> None:
    """Serve on 127.0.0.1:``port`` until terminated."""
    import litserve as ls

    from .litserve_api import EmbeddingAPI

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # preprocessing only: no torch thread pool
    api = EmbeddingAPI(pipeline, model_file, threads, max_batch_size=max_batch_size,
                       batch_timeout=batch_timeout, api_path=API_PATH)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers,
                          timeout=60)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


# ------------------------------------------------------------------------ the parent side
@contextlib.contextmanager
def start_peer(pipeline: str, model_file: str, workers: int = 2, threads: int = 1,
               max_batch_size: int = MAX_BATCH, batch_timeout: float = BATCH_TIMEOUT_S,
               ready_timeout: float = 180.0, log_file: Optional[str] = None
               ) -> Iterator[Dict[str, Any]]:
    """Start the LitServe peer on a free loopback port; yield ``{url, pid, startup_s, ...}``;
    stop it (its whole process group) on exit."""
    from .common import ROOT
    from .peer_process import child_server, free_ports

    port = free_ports(1)[0]
    argv = [sys.executable, "-m", "bench.peer_litserve", "--pipeline", pipeline,
            "--onnx", model_file, "--port", str(port), "--workers", str(workers),
            "--threads", str(threads), "--max-batch-size", str(max_batch_size),
            "--batch-timeout", str(batch_timeout)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get(
                   "PYTHONPATH", "").split(os.pathsep) if p]))
    base = f"http://127.0.0.1:{port}"
    with child_server("litserve", argv, base + "/health", env, str(ROOT), ready_timeout,
                      log_file=log_file) as info:
        yield {**info, "url": base + API_PATH}


def client(pipeline: str, url: str):
    """An :class:`bench.http_load.HttpJsonClient` for the peer at ``url``."""
    from .http_load import HttpJsonClient

    return HttpJsonClient(url, lambda item: request_body(pipeline, item), vector_from_response)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, choices=("resnet50", "clip", "minilm"))
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH)
    parser.add_argument("--batch-timeout", type=float, default=BATCH_TIMEOUT_S)
    args = parser.parse_args(argv)
    serve(args.pipeline, args.onnx, args.port, args.workers, args.threads,
          args.max_batch_size, args.batch_timeout)


if __name__ == "__main__":
    main()
