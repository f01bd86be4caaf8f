# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""How many CPU threads an operator's runtime may use, so that its instances share the cores
this process may run on without oversubscribing them.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset
    narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_threads_per_instance(instances: int = 1) -> int:
    """Threads one instance may use so that ``instances`` of them fit :func:`usable_cores`."""
    return max(1, usable_cores() // max(1, instances))
