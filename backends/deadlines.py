# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""The deadline a request carries from step to step of a served pipeline.

A client's budget is Triton's own per-request ``timeout`` (microseconds; towhee_rt's client
sends the time it has left). Triton hands that same number to every step of an ensemble, and
each step's queue measures it from the moment the request entered *that* queue: every step gets
the whole budget again, so a request the client gave up on long ago is still computed by the
later steps. Here the budget becomes a deadline once, when the first step takes the request
(:func:`deadline_from_budget`), on the server's monotonic clock, which every step shares (they
are processes of one machine; the client's clock is never read, so client and server clocks
need not agree). The deadline travels to the next steps in the ``towhee_deadline`` tensor
(:data:`DEADLINE_TENSOR`, one int64 per item, wired by the ensemble), and each step drops the
requests whose deadline has passed before it starts computing them, or would pass before it
finished them (:func:`overdue_ms`, :class:`StepTime`), with an error that names the operator and
says "deadline exceeded".

The first step's own queue wait is not counted (the Python backend is not told when a request
arrived); Triton's queue policy bounds it by the same budget. A request without a timeout
(curl, KServe v2 clients that send none, older clients) has no deadline (:data:`NO_DEADLINE`)
and is computed as before.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

#: The tensor that carries a request's deadline from one step to the next: int64 per item,
#: nanoseconds of the server's ``time.monotonic_ns()``; 0 means none.
DEADLINE_TENSOR = "towhee_deadline"
NO_DEADLINE = 0
#: Triton's words when a queue policy drops a request past its timeout. A request a step drops
#: for its deadline says them too, so that clients treat both alike (towhee_rt's client:
#: a deadline answer, not an error of the items).
TRITON_TIMEOUT_WORDS = "Request timeout expired"
#: What every deadline drop says after the operator's name; clients read it as "the caller's
#: time is up" (not "busy": another replica cannot finish it in time either).
DEADLINE_WORDS = "deadline exceeded"


def now_ns() -> int:
    """The clock deadlines are on: monotonic, shared by every process of the server's machine."""
    return time.monotonic_ns()


def deadline_from_budget(budget_us: Any, now: int) -> int:
    """The deadline of a request with ``budget_us`` microseconds left at ``now``
    (:data:`NO_DEADLINE` when the budget is 0, missing or not a number)."""
    try:
        budget = int(budget_us or 0)
    except (TypeError, ValueError):
        return NO_DEADLINE
    return now + budget * 1000 if budget > 0 else NO_DEADLINE


def deadline_of(values: Any) -> int:
    """The deadline in a received ``towhee_deadline`` tensor (its items all carry the same one;
    the earliest is taken); :data:`NO_DEADLINE` when it is empty or carries none."""
    array = np.asarray(values, dtype=np.int64).reshape(-1)
    set_ = array[array > 0]
    return int(set_.min()) if set_.size else NO_DEADLINE


def overdue_ms(deadline: int, now: int, expected_ns: int = 0) -> Optional[float]:
    """How many milliseconds past ``deadline`` a step that starts now and takes ``expected_ns``
    would finish (negative: it starts in time but would end after it), or ``None`` when the
    request still has time (or has no deadline). A result after the deadline reaches no one:
    the caller has given up."""
    if deadline == NO_DEADLINE or now + max(0, expected_ns) < deadline:
        return None
    return (now - deadline) / 1e6


def expired_message(operator: str, overdue: float, expected_ms: float = 0.0) -> str:
    """The error of a request a step dropped because of its deadline (``overdue`` from
    :func:`overdue_ms`; ``expected_ms``: what the step takes)."""
    if overdue >= 0:
        why = "the request's time ran out %.0f ms before this step could start it" % overdue
    else:
        why = ("the request had %.0f ms left, less than this step takes (about %.0f ms)"
               % (-overdue, expected_ms))
    return ("operator %s: %s: %s, so it was not computed (%s; raise the client's "
            "timeout= or lower the load)" % (operator, DEADLINE_WORDS, why, TRITON_TIMEOUT_WORDS))


class StepTime:
    """How long this step's calls take: a moving average of the last ones (nanoseconds; 0
    until one has been measured), to tell a request that cannot finish before its deadline."""

    def __init__(self, weight: float = 0.2):
        self.weight, self.ns = weight, 0

    def add(self, ns: int) -> None:
        """Count one call that took ``ns``."""
        self.ns = int(ns if not self.ns else (1 - self.weight) * self.ns + self.weight * ns)

    def decay(self) -> None:
        """Lower the estimate after a call that computed nothing (every request dropped):
        an estimate inflated by one slow call must not drop every request for good, since a
        call that computes nothing measures nothing."""
        self.ns = int((1 - self.weight) * self.ns)


def deadline_column(deadline: int, count: int) -> np.ndarray:
    """The ``towhee_deadline`` tensor of a response of ``count`` items: ``[count, 1]`` int64."""
    return np.full((count, 1), deadline, dtype=np.int64)
