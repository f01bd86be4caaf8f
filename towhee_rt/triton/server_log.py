"""A tritonserver's log: why a start failed, which models are still loading, and the error
that says so (:class:`ServerStartError`).

A failed start is explained cause first: each model Triton could not load (or whose directory
it could not read) with its reason, then what happened to the server, then where the log is.
The log's own lines are quoted only when no cause was found. tritonserver's CUDA complaints on
a machine without a GPU (``CUDA driver version is insufficient``, ``CudaDriverHelper has not
been initialized``...) are harmless for CPU models and never presented as a cause: on such a
machine they are left out of the quoted lines and counted instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ServerError

LOG_TAIL_LINES = 40
_FAILED_LOAD = re.compile(r"failed to load '([^']+)' version \d+: (.*?)\"?$", re.M)
_FAILED_ONLY = re.compile(r"failed to load '([^']+)'\"?$", re.M)
_POLL_FAILED = re.compile(r"Poll failed for model directory '([^']+)': (.*?)\"?$", re.M)
_LOADING = re.compile(r"\"loading: ([^:\"]+):\d+\"")
_LOADED = re.compile(r"successfully loaded '([^']+)'")
#: tritonserver's messages about a missing GPU or driver: noise for CPU-only models.
_CUDA_NOISE = re.compile(r"CUDA|CudaDriverHelper|cuda_memory_manager|pinned memory|"
                         r"number of CUDA devices|GPU metrics|NVML|DCGM", re.I)


class ServerStartError(ServerError):
    """tritonserver exited or timed out before it was ready.

    ``failed_models`` maps each model Triton could not load to its reason; ``log_file`` is the
    server's log and ``log_tail`` its last lines (CUDA noise left out).
    """

    def __init__(self, message: str, *, failed_models: Optional[Dict[str, str]] = None,
                 log_file: Optional[Path] = None, log_tail: str = ""):
        self.failed_models = dict(failed_models or {})
        self.log_file = log_file
        self.log_tail = log_tail
        super().__init__(message)


def _unescape(reason: str) -> str:
    """Triton quotes messages with ``\\n`` and ``\\"``: one line, parts joined by ``|``."""
    reason = reason.replace("\\n", "\n").replace('\\"', '"').strip()
    return re.sub(r"\n+", " | ", reason)


def parse_failed_models(log_text: str) -> Dict[str, str]:
    """Model name -> Triton's reason (one line), from ``failed to load 'm' ...`` log lines and
    from ``Poll failed for model directory 'm'`` (a directory Triton could not read)."""
    failed: Dict[str, str] = {}
    for pattern in (_FAILED_LOAD, _POLL_FAILED):
        for match in pattern.finditer(log_text):
            failed.setdefault(match.group(1), _unescape(match.group(2)))
    for match in _FAILED_ONLY.finditer(log_text):
        failed.setdefault(match.group(1), "")
    return failed


def loading_models(log_text: str) -> List[str]:
    """Models whose ``loading: m:1`` log line has no ``successfully loaded``/``failed`` yet."""
    started = dict.fromkeys(_LOADING.findall(log_text))
    done = set(_LOADED.findall(log_text)) | set(parse_failed_models(log_text))
    return [name for name in started if name not in done]


def is_cuda_noise(line: str) -> bool:
    """Whether a log line is tritonserver complaining about a missing GPU or CUDA driver."""
    return bool(_CUDA_NOISE.search(line))


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA driver (then CUDA messages may matter)."""
    return os.path.exists("/dev/nvidiactl")


def log_tail(text: str, lines: int = LOG_TAIL_LINES, drop_cuda: bool = True) -> List[str]:
    """The last ``lines`` lines of a server log, without Triton's tables (server options,
    backends, models; their content is in the lines before) and, with ``drop_cuda``, without
    CUDA noise."""
    kept: List[str] = []
    for line in text.splitlines():
        if line.startswith(("|", "+")) or not line.strip() or (drop_cuda and is_cuda_noise(line)):
            continue
        kept.append(line)
    return kept[-lines:]


def _causes(failed: Dict[str, str]) -> str:
    if len(failed) == 1:
        (name, reason), = failed.items()
        return f"model '{name}' failed to load: {reason or '(no reason in the log)'}"
    return "failed models:\n" + "\n".join(f"  {name}: {reason}"
                                           for name, reason in failed.items())


def start_error(headline: str, log_file: Optional[Path], log_text: str,
                command: Sequence[str] = ()) -> ServerStartError:
    """The error of a server that was not ready: the models its log says failed to load
    (first: they are the cause), ``headline``, ``command`` (when given), the log's last lines
    when no cause was found, and the log's path."""
    failed = parse_failed_models(log_text)
    drop_cuda = not gpu_present()
    tail = "\n".join(log_tail(log_text, drop_cuda=drop_cuda))
    parts = [_causes(failed), headline] if failed else [headline]
    if command:
        parts.append("command: " + " ".join(command))
    if not failed and tail:
        parts.append(f"last lines of the log:\n{tail}")
    noise = sum(1 for line in log_text.splitlines() if is_cuda_noise(line)) if drop_cuda else 0
    if noise and not failed:
        parts.append(f"({noise} CUDA line(s) left out: tritonserver writes them on every "
                     "machine without a GPU; they are not the cause)")
    parts.append(f"log: {log_file}")
    return ServerStartError("\n".join(parts), failed_models=failed, log_file=log_file,
                            log_tail=tail)


def read_log(log_file: Optional[Path], offset: int = 0) -> str:
    """What the server wrote to ``log_file`` from byte ``offset`` on ("" without a log)."""
    if log_file is None:
        return ""
    try:
        with open(log_file, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""
