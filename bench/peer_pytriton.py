"""The peer server: PyTriton serving the same ONNX model + the same preprocessing.

What a user would write with PyTriton instead of towhee_rt: one ``@batch``-decorated Python
function bound to Triton (dynamic batching on), doing decode (cv2, as towhee_rt's
``image_decode.cv2_rgb``) or tokenisation, the model library's own preprocessing, and ONNX
Runtime (2 intra-op threads) on the ONNX file towhee_rt exported. Its input and output names
match towhee_rt's ensemble (``image``/``text`` BYTES -> ``embedding``), so the same
``towhee_rt.Client`` queries both servers with the same concurrency.

Run as a child process (see :func:`start_peer`): PyTriton needs this interpreter's LIBDIR first
on ``LD_LIBRARY_PATH`` *before* Triton starts, which only the child's environment can guarantee::

    python -m bench.peer_pytriton --pipeline resnet50 --onnx model.onnx --grpc-port 8101 ...

It prints ``READY <grpc port>`` once serving, and stops on SIGTERM/SIGINT or when stdin closes.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

MODEL_NAME = "pipeline"
MAX_BATCH = 16
QUEUE_DELAY_US = 2000


# ------------------------------------------------------------------- the user's function
def make_preprocess(pipeline: str) -> Callable[[List[bytes]], Dict[str, np.ndarray]]:
    """items (encoded images or UTF-8 text) -> model-input arrays, as the libraries do it."""
    if pipeline == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer
        from towhee_rt.backends.text_embedding import bundled_minilm_dir

        tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_dir())

        def tokenize(items: List[bytes]) -> Dict[str, np.ndarray]:
            texts = [bytes(t).decode("utf-8") for t in items]
            enc = tokenizer(texts, padding=True, truncation=True, max_length=256,
                            return_tensors="np")
            return {"input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64)}

        return tokenize

    import cv2
    from PIL import Image

    if pipeline == "resnet50":
        import timm.data
        from timm.models import get_pretrained_cfg

        config = timm.data.resolve_data_config(
            pretrained_cfg=get_pretrained_cfg("resnet50").to_dict())
        transform = timm.data.create_transform(**config)
    elif pipeline == "clip":
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        size = open_clip.get_model_config("ViT-B-32")["vision_cfg"]["image_size"]
        transform = image_transform_v2(PreprocessCfg(size=(size, size)), is_train=False)
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}")

    def preprocess(items: List[bytes]) -> Dict[str, np.ndarray]:
        tensors = []
        for data in items:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            tensors.append(np.asarray(transform(Image.fromarray(rgb)), dtype=np.float32))
        return {"image": np.stack(tensors)}

    return preprocess


def make_infer(pipeline: str, model_file: str, threads: int) -> Callable:
    """The ``@batch`` function PyTriton binds: inputs ``[B, 1]`` bytes -> ``embedding [B, D]``."""
    import onnxruntime as ort
    from pytriton.decorators import batch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    preprocess = make_preprocess(pipeline)
    input_name = "text" if pipeline == "minilm" else "image"

    @batch
    def infer(**inputs: np.ndarray) -> Dict[str, np.ndarray]:
        items = list(inputs[input_name].reshape(-1))
        feed = preprocess(items)
        out = session.run(None, {n: feed[n] for n in names})[0]
        return {"embedding": out.astype(np.float32)}

    return infer


def serve(pipeline: str, model_file: str, grpc_port: int, http_port: int, metrics_port: int,
          threads: int, queue_delay_us: int, log_file: Optional[str]) -> None:
    """Bind and serve until SIGTERM/SIGINT or stdin closes."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    input_name = "text" if pipeline == "minilm" else "image"
    config = TritonConfig(http_address="127.0.0.1", http_port=http_port,
                          grpc_address="127.0.0.1", grpc_port=grpc_port,
                          metrics_address="127.0.0.1", metrics_port=metrics_port,
                          allow_gpu_metrics=False,
                          log_file=Path(log_file) if log_file else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with Triton(config=config) as triton:
        triton.bind(model_name=MODEL_NAME,
                    infer_func=make_infer(pipeline, model_file, threads),
                    inputs=[Tensor(name=input_name, dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name="embedding", dtype=np.float32, shape=(-1,))],
                    config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=queue_delay_us)),
                    strict=False)
        triton.run()
        print(f"READY {grpc_port}", flush=True)
        while not stop.wait(0.5):
            pass


# ------------------------------------------------------------------------ the parent side
@contextlib.contextmanager
def start_peer(pipeline: str, model_file: str, threads: int = 2,
               queue_delay_us: int = QUEUE_DELAY_US, ready_timeout: float = 180.0,
               log_file: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """Start the PyTriton peer in a child process with the environment it needs; stop it."""
    from towhee_rt.triton.embedded import stub_environment
    from towhee_rt.triton.ports import find_free_port

    from .common import ROOT

    ports = []
    while len(ports) < 3:
        port = find_free_port()
        if port not in ports:
            ports.append(port)
    argv = [sys.executable, "-m", "bench.peer_pytriton", "--pipeline", pipeline,
            "--onnx", model_file, "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
            "--metrics-port", str(ports[2]), "--threads", str(threads),
            "--queue-delay-us", str(queue_delay_us)]
    if log_file is None:  # keep Triton's log off stdout, where READY is announced
        fd, log_file = tempfile.mkstemp(prefix="bench-pytriton-", suffix=".log")
        os.close(fd)
    argv += ["--log-file", log_file]
    env = stub_environment()  # without it PyTriton's stubs fail here (see its docstring)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True,
                            start_new_session=True)
    lines: List[str] = []
    try:
        deadline = time.monotonic() + ready_timeout
        ready = threading.Event()

        def pump():
            for line in proc.stdout:
                lines.append(line.rstrip())
                if "READY " in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the PyTriton peer did not start:\n" + "\n".join(lines[-30:]))
        yield {"grpc_url": f"127.0.0.1:{ports[0]}", "pid": proc.pid,
               "startup_s": round(time.perf_counter() - t0, 1), "log": lines,
               "log_file": log_file}
    finally:
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # Triton and its stubs, if left behind


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, choices=("resnet50", "clip", "minilm"))
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queue-delay-us", type=int, default=QUEUE_DELAY_US)
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args(argv)
    serve(args.pipeline, args.onnx, args.grpc_port, args.http_port, args.metrics_port,
          args.threads, args.queue_delay_us, args.log_file)


if __name__ == "__main__":
    main()
