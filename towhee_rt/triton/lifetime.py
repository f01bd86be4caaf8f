"""Serving until told to stop: one loop for ``towhee-rt serve``, ``server.serve_forever()``
and anyone who runs a :class:`~towhee_rt.triton.server.TritonServer` in the foreground.

:func:`run_until_stopped` blocks while a ready server serves and stops it when a stop is
requested (an :class:`threading.Event`), when tritonserver dies, or when the supervisor gives
up a model that keeps dying; the :class:`ServeOutcome` says which. :class:`StopSignals` turns
SIGINT/SIGTERM into that stop request (while starting, into :class:`KeyboardInterrupt`; a
second signal kills at once). :func:`serve_until_signalled` puts the two together.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any, Callable, Optional

from .flags import STOP_TIMEOUT_SECS
from .server_log import log_tail

#: Why serving ended.
STOPPED, SERVER_EXITED, MODEL_GIVEN_UP = "stopped", "server exited", "model given up"
#: Log lines quoted when tritonserver died while serving.
CRASH_TAIL_LINES = 20


@dataclasses.dataclass(frozen=True)
class ServeOutcome:
    """How serving ended: ``reason`` (:data:`STOPPED` on request, :data:`SERVER_EXITED`,
    :data:`MODEL_GIVEN_UP`), tritonserver's exit code, a one-line ``message`` and, after a
    failure, the end of the server's log (``log_tail``)."""

    reason: str
    exit_code: Optional[int]
    message: str
    log_tail: str = ""

    @property
    def failed(self) -> bool:
        """Whether serving ended on its own (a failure) rather than on request."""
        return self.reason != STOPPED


def run_until_stopped(server: Any, stop_requested: threading.Event, poll_s: float = 0.5,
                      stop_timeout: float = STOP_TIMEOUT_SECS,
                      on_stopping: Optional[Callable[[], None]] = None) -> ServeOutcome:
    """Block while the started, ready ``server`` serves; stop it and say why as soon as
    ``stop_requested`` is set (then ``on_stopping()`` is called first: a graceful stop
    takes seconds), tritonserver exits, or a model is given up."""
    while not stop_requested.wait(poll_s):
        if not server.is_alive():
            code = server.stop()
            tail = "\n".join(log_tail(server.log_text(), CRASH_TAIL_LINES))
            return ServeOutcome(SERVER_EXITED, code, f"tritonserver exited unexpectedly "
                                f"(code {code}); log: {server.log_file}", tail)
        if server.given_up_models:
            models = ", ".join(sorted(server.given_up_models))
            code = server.stop(stop_timeout)
            return ServeOutcome(MODEL_GIVEN_UP, code, f"model {models} kept dying and was "
                                f"left unloaded; stopped tritonserver (log: {server.log_file})")
    if on_stopping is not None:
        on_stopping()
    code = server.stop(stop_timeout)
    return ServeOutcome(STOPPED, code, f"tritonserver stopped (exit code {code})")


class StopSignals:
    """A context manager that handles SIGINT and SIGTERM for a foreground ``server``.

    Before :meth:`serving` a signal raises :class:`KeyboardInterrupt` (leaving a start that
    waits for the models); afterwards it sets :attr:`stop_requested`. A second signal kills
    the server at once. Outside the main thread (where Python cannot handle signals) it
    installs nothing and only :attr:`stop_requested` stops the server.
    """

    def __init__(self, server: Any, stop_requested: Optional[threading.Event] = None):
        self.server = server
        self.stop_requested = stop_requested or threading.Event()
        self._serving = threading.Event()
        self._previous: dict = {}

    def serving(self) -> None:
        """The server is ready: from now on a signal requests a graceful stop."""
        self._serving.set()

    def _on_signal(self, signum, frame) -> None:
        if self.stop_requested.is_set():  # a second Ctrl-C while stopping: do not wait more
            self.server.kill()
            return
        self.stop_requested.set()
        if not self._serving.is_set():
            raise KeyboardInterrupt  # still starting: leave wait_ready()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal)
                              for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def serve_until_signalled(server: Any, on_ready: Optional[Callable[[Any], None]] = None,
                          stop_requested: Optional[threading.Event] = None,
                          on_stopping: Optional[Callable[[], None]] = None) -> ServeOutcome:
    """Start ``server`` (unless it runs), wait until it is ready, call ``on_ready(server)``
    and serve until SIGINT/SIGTERM, ``stop_requested``, its death or a model given up
    (:func:`run_until_stopped`, which calls ``on_stopping``).

    Raises what :meth:`~towhee_rt.triton.server.TritonServer.start_ready` raises (the server
    is stopped then), :class:`KeyboardInterrupt` for a signal while starting.
    """
    with StopSignals(server, stop_requested) as signals:
        server.start_ready()
        signals.serving()
        if on_ready is not None:
            on_ready(server)
        return run_until_stopped(server, signals.stop_requested, on_stopping=on_stopping)
