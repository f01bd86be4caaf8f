"""py-spy evidence for what limits a served pipeline: where each Triton stub spends its CPU.

:func:`profile_server` samples every Python-backend stub of a running tritonserver with
``py-spy record --nonblocking`` while the caller keeps the server busy, writes one flame graph
(SVG) per stub and returns a summary: for each stub, the share of its samples in ONNX Runtime,
in preprocessing (PIL resize, other transforms), in decode, in Triton I/O, and how busy it was.
"""
from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .cpu_load import process_label

#: (category, substring of a frame) checked from the innermost frame outwards.
CATEGORIES = [
    ("ONNX Runtime", "Session.run"),
    ("torch model", "Module._call_impl (timm"),
    ("preprocess: PIL resize", "Image.resize"),
    ("preprocess: tokenizer", "tokeniz"),
    ("preprocess: transforms", "transform_images"),
    ("preprocess: transforms", "preprocess"),
    ("decode (cv2)", "decode_cv2"),
    ("decode (cv2)", "image_decode"),
    ("Triton I/O (model.py)", "model.py"),
]


def py_spy() -> Optional[str]:
    """The py-spy binary, if installed (``pip install py-spy``)."""
    import sys

    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def stub_pids(server_pid: int) -> List[int]:
    out = subprocess.run(["pgrep", "-P", str(server_pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def classify(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for category, needle in CATEGORIES:
            if needle in frame:
                return category
    return "other"


def summarize_raw(path: Path, rate: int, seconds: float) -> Dict[str, object]:
    """Category -> share of samples, and busy = samples / (rate * seconds), from raw output."""
    counts: Dict[str, int] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        counts[classify(stack)] += int(count)
        total += int(count)
    shares = {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return {"samples": total, "busy_fraction": round(total / max(1.0, rate * seconds), 2),
            "shares": shares}


def profile_server(server_pid: int, load: Callable[[], None], out_dir: Path, prefix: str,
                   seconds: float = 4.0, rate: int = 50) -> Dict[str, object]:
    """Profile every stub of ``server_pid`` while ``load()`` runs; SVGs go to ``out_dir``."""
    binary = py_spy()
    if binary is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    pids = stub_pids(server_pid)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pyspy-"))
    summary: Dict[str, object] = {"seconds": seconds, "rate": rate, "stubs": {}}
    try:
        for fmt in ("raw", "flamegraph"):  # two windows: summary numbers, then the SVGs
            procs = []
            for pid in pids:
                label = process_label(pid).replace("stub ", "")
                target = (tmp / f"{label}.txt") if fmt == "raw" else \
                    out_dir / f"{prefix}_{label}.svg"
                argv = [binary, "record", "-p", str(pid), "-o", str(target), "-f", fmt,
                        "-d", str(int(seconds)), "-r", str(rate), "--nonblocking"]
                procs.append((label, target, subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
            worker = threading.Thread(target=load, daemon=True)
            time.sleep(0.3)
            worker.start()
            for label, target, proc in procs:
                output = proc.communicate(timeout=seconds + 60)[0]
                if proc.returncode != 0 or not target.exists():
                    summary["stubs"].setdefault(label, {})["error"] = output.strip()[-300:]
                elif fmt == "raw":
                    summary["stubs"][label] = summarize_raw(target, rate, seconds)
                else:
                    summary["stubs"].setdefault(label, {})["svg"] = target.name
            worker.join()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
