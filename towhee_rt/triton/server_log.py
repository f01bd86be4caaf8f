"""A tritonserver's log: the models it failed to load or is still loading, its tail, and the
error that quotes them when a start fails (:class:`ServerStartError`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ServerError

LOG_TAIL_LINES = 40
_FAILED_LOAD = re.compile(r"failed to load '([^']+)' version \d+: (.*?)\"?$", re.M)
_FAILED_ONLY = re.compile(r"failed to load '([^']+)'\"?$", re.M)
_LOADING = re.compile(r"\"loading: ([^:\"]+):\d+\"")
_LOADED = re.compile(r"successfully loaded '([^']+)'")


class ServerStartError(ServerError):
    """tritonserver exited or timed out before it was ready.

    ``failed_models`` maps each model Triton could not load to its reason; ``log_file`` is the
    server's log and ``log_tail`` its last lines, also quoted in the message.
    """

    def __init__(self, message: str, *, failed_models: Optional[Dict[str, str]] = None,
                 log_file: Optional[Path] = None, log_tail: str = ""):
        self.failed_models = dict(failed_models or {})
        self.log_file = log_file
        self.log_tail = log_tail
        super().__init__(message)


def parse_failed_models(log_text: str) -> Dict[str, str]:
    """Model name -> Triton's reason (one line), from ``failed to load 'm' ...`` log lines."""
    failed: Dict[str, str] = {}
    for match in _FAILED_LOAD.finditer(log_text):
        reason = match.group(2).replace("\\n", "\n").replace('\\"', '"').strip()
        failed.setdefault(match.group(1), re.sub(r"\n+", " | ", reason))
    for match in _FAILED_ONLY.finditer(log_text):
        failed.setdefault(match.group(1), "")
    return failed


def loading_models(log_text: str) -> List[str]:
    """Models whose ``loading: m:1`` log line has no ``successfully loaded``/``failed`` yet."""
    started = dict.fromkeys(_LOADING.findall(log_text))
    done = set(_LOADED.findall(log_text)) | set(parse_failed_models(log_text))
    return [name for name in started if name not in done]


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> List[str]:
    """The last ``lines`` lines of a server log, without Triton's server-options table."""
    kept: List[str] = []
    in_options = False
    for line in text.splitlines():
        if line.startswith("| Option "):
            in_options = True
            kept = kept[:-1] if kept and kept[-1].startswith("+") else kept
        elif in_options and not line.startswith(("|", "+")):
            in_options = False
        if not in_options:
            kept.append(line)
    return kept[-lines:]


def start_error(headline: str, log_file: Optional[Path], log_text: str,
                command: Sequence[str] = ()) -> ServerStartError:
    """The error of a server that was not ready: ``headline``, the models its log says failed
    to load, ``command`` (when given) and the last :data:`LOG_TAIL_LINES` lines of its log."""
    failed = parse_failed_models(log_text)
    tail = "\n".join(log_tail(log_text))
    parts = [headline]
    if failed:
        parts.append("failed models:\n" + "\n".join(
            f"  {name}: {reason}" for name, reason in failed.items()))
    if command:
        parts.append("command: " + " ".join(command))
    parts.append(f"last {LOG_TAIL_LINES} lines of {log_file}:\n{tail}")
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
