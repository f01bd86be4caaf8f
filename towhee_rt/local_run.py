"""The local, in-process runner: items flow through each operator in chunks, in order.

``chunksize`` items form one batch for an operator and ``parallel`` chunks run at once on a
thread pool; results keep the input order. An item that fails in an operator becomes an
:class:`~towhee_rt.errors.ItemError` (naming the operator and the item's index) and skips the
remaining operators; the other items carry on.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Sequence

from .backends.operator_base import Operator
from .backends.wire import ItemFailure
from .backends.batching import process_items
from .errors import ItemError
from .op_config import OpConfig


class LocalStep:
    """One operator instance with its resolved configuration and its worker pool."""

    def __init__(self, operator: Operator, config: OpConfig):
        self.operator = operator
        self.config = config
        self._pool = None
        self._lock = threading.Lock()

    def setup(self) -> None:
        """Load the operator's resources (weights) once, on its configured device."""
        with self._lock:
            self.operator.ensure_setup(self.config.device)

    def map_chunks(self, chunks: List[List[tuple]]) -> List[List[Any]]:
        """Run ``process_items`` on every chunk, ``parallel`` at a time, keeping order."""
        if self.config.parallel == 1 or len(chunks) == 1:
            return [process_items(self.operator, chunk) for chunk in chunks]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.parallel,
                                            thread_name_prefix=f"towhee_rt-{self.operator.name}")
        return list(self._pool.map(lambda c: process_items(self.operator, c), chunks))

    def close(self) -> None:
        """Stop the worker pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def run_local(steps: Sequence[LocalStep], inputs: Sequence[Any]) -> List[Any]:
    """Run ``inputs`` through ``steps``; return each item's result or its :class:`ItemError`.

    A result is the last operator's single output, or a tuple when it has several.
    """
    states: Dict[int, tuple] = {i: (item,) for i, item in enumerate(inputs)}
    failures: Dict[int, ItemError] = {}
    for step in steps:
        step.setup()
        alive = [i for i in range(len(inputs)) if i not in failures]
        size = step.config.chunksize
        index_chunks = [alive[k:k + size] for k in range(0, len(alive), size)]
        outcomes = step.map_chunks([[states[i] for i in chunk] for chunk in index_chunks])
        for chunk, results in zip(index_chunks, outcomes):
            for i, result in zip(chunk, results):
                if isinstance(result, BaseException):
                    failures[i] = ItemError.from_failure(
                        ItemFailure.from_exception(step.operator.name, i, result))
                    states.pop(i, None)
                else:
                    states[i] = result
    return [failures[i] if i in failures else _unwrap(states[i]) for i in range(len(inputs))]


def _unwrap(state: tuple) -> Any:
    return state[0] if len(state) == 1 else state
