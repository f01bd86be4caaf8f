# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Running an operator on a batch of items so that one bad item cannot fail the others, and
stacking per-item values into the batch arrays Triton sends.
"""
from __future__ import annotations

import traceback
from typing import Any, List, Sequence, Tuple

import numpy as np

from .operator_base import Operator, TensorSpec


def stack_items(items: Sequence[Any], spec: TensorSpec) -> np.ndarray:
    """Stack per-item values into one batch array of ``spec``'s dtype (bytes -> np.object_)."""
    if spec.dtype == "bytes":
        out = np.empty(len(items), dtype=np.object_)
        for i, item in enumerate(items):
            out[i] = item.encode() if isinstance(item, str) else bytes(item)
        return out
    return np.stack([np.asarray(item, dtype=spec.dtype) for item in items])


def process_items(op: Operator, items: Sequence[Tuple[Any, ...]]) -> List[Any]:
    """Run ``op`` on ``items`` (each a tuple of input values ordered like ``op.inputs``).

    Returns one entry per item, in order: a tuple of output values ordered like
    ``op.outputs``, or the exception that item raised. The whole batch runs in one call; if
    that call raises, each item is retried alone so one bad item cannot fail the others.
    """
    if not items:
        return []
    try:
        return _run(op, items)
    except Exception as exc:  # noqa: BLE001 - isolated below, per item
        if len(items) == 1:
            return [exc]
    return [_single(op, item) for item in items]


def _run(op: Operator, items: Sequence[Tuple[Any, ...]]) -> List[Tuple[Any, ...]]:
    batch = {spec.name: [item[i] for item in items] for i, spec in enumerate(op.inputs)}
    out = op(batch)
    columns = [out[spec.name] for spec in op.outputs]
    for spec, column in zip(op.outputs, columns):
        if len(column) != len(items):
            raise RuntimeError(f"{op.name}: output {spec.name!r} has {len(column)} items "
                               f"for {len(items)} inputs")
    return list(zip(*columns))


def _single(op: Operator, item: Tuple[Any, ...]) -> Any:
    try:
        return _run(op, [item])[0]
    except Exception as exc:  # noqa: BLE001 - reported per item
        return exc


def detach_tracebacks(outcomes: List[Any]) -> List[Any]:
    """``outcomes`` (from :func:`process_items`) with each exception's traceback turned into
    text (its ``traceback_text`` attribute) and dropped, along its ``__cause__``/``__context__``
    chain; returns the same list.

    A traceback holds the frames it passed through, and through their ``f_back`` the caller
    that holds ``outcomes``, with every other item's result: a reference cycle that keeps a
    request's decoded images alive until Python's cyclic collector runs, which an idle server
    process seldom does (+45 to +121 MiB in a decode stub under a bounded load with bad images,
    bench/results/memory.md). Long-lived servers call this; a local run keeps the tracebacks
    for debugging.
    """
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not hasattr(outcome, "traceback_text"):
            outcome.traceback_text = "".join(traceback.format_exception(
                type(outcome), outcome, outcome.__traceback__)).rstrip()
            seen, exc = set(), outcome
            while exc is not None and id(exc) not in seen:
                seen.add(id(exc))
                exc.__traceback__ = None
                exc = exc.__cause__ or exc.__context__
    return outcomes
