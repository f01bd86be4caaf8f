"""CPU time per item of a measured point, by process group, and the items/s it allows.

Issue 23 asks that a missed target be explained by a measurement. Every served and peer row
carries ``cpu_split`` (cores used by each of the benchmark's processes during the point,
``bench/cpu_load.py``) and ``items_per_s``: cores / items_per_s is the CPU time each item
cost in each process. Grouped by role (:data:`GROUPS`) and summed, it says where a served
pipeline's CPU goes, and ``cores * 1000 / total_ms`` is the most items/s the machine could
reach at that cost per item with every core busy. The model step's share compares with the
ceiling's own CPU per item (``settings['cpu_ms_per_item']``, ``bench/baselines.py``);
:func:`ceiling_reason` puts it all in the reason of a missed "served >= 0.85x its ceiling"
(``bench/targets.py``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

#: Process groups, in the order a budget is printed, and their names in a reason.
GROUPS = ("model", "decode", "client", "tritonserver", "other")
GROUP_NAMES = {"model": "model stubs", "decode": "decode stubs", "client": "client",
               "tritonserver": "tritonserver", "other": "other"}
#: Idle cores worth a mention in a reason.
IDLE_NOTABLE = 0.2


def group_of(label: str) -> str:
    """The group of one ``cpu_split`` label: model stubs (``...embedding...``), decode stubs,
    the bench process (the client), tritonserver, or other (peers' processes, ``pid N``)."""
    if "embedding" in label:
        return "model"
    if "decode" in label:
        return "decode"
    if label.startswith("bench process"):
        return "client"
    if label == "tritonserver":
        return "tritonserver"
    return "other"


def machine_cores(results: Optional[Dict[str, Any]] = None) -> int:
    """The cores of the machine measured: ``results['machine']['cores']``, else this one's."""
    cores = ((results or {}).get("machine") or {}).get("cores")
    return int(cores) if cores else (os.cpu_count() or 1)


@dataclasses.dataclass
class CpuBudget:
    """CPU ms per item by group (:data:`GROUPS`, zero groups left out) of one point."""

    ms: Dict[str, float]
    cores: int
    #: Cores the benchmark's processes used, and cores used by processes outside it.
    used_cores: float
    foreign_cores: float

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())

    @property
    def cpu_bound_items_per_s(self) -> float:
        """items/s with all :attr:`cores` busy at :attr:`total_ms` of CPU per item."""
        return self.cores * 1000.0 / self.total_ms if self.total_ms > 0 else 0.0

    @property
    def idle_cores(self) -> float:
        """Cores neither the benchmark nor other processes used during the point."""
        return max(0.0, self.cores - self.used_cores - self.foreign_cores)

    def by_group(self, leave_out: Tuple[str, ...] = ()) -> str:
        """``decode stubs 2.00, client 1.00``: ms per item of each group not left out."""
        return ", ".join(f"{GROUP_NAMES[g]} {v:.2f}" for g, v in self.ms.items()
                         if g not in leave_out)


def ms_per_item(cpu_split: Dict[str, float], items_per_s: float) -> Dict[str, float]:
    """CPU milliseconds per item of each process of a ``cpu_split`` (cores used) at
    ``items_per_s``."""
    return {label: used * 1000.0 / items_per_s for label, used in cpu_split.items()}


def budget(row: Dict[str, Any], cores: int) -> Optional[CpuBudget]:
    """The :class:`CpuBudget` of a row, or None without a ``cpu_split`` or a rate."""
    split, rate = row.get("cpu_split") or {}, row.get("items_per_s") or 0.0
    if not split or rate <= 0:
        return None
    ms: Dict[str, float] = {}
    for label, label_ms in ms_per_item(split, rate).items():
        group = group_of(label)
        ms[group] = ms.get(group, 0.0) + label_ms
    ordered = {g: ms[g] for g in GROUPS if ms.get(g, 0.0) > 0}
    return CpuBudget(ordered, cores, sum(split.values()), row.get("foreign_cores") or 0.0)


def ceiling_ms_per_item(ceiling: Dict[str, Any]) -> Tuple[Optional[float], bool]:
    """The ceiling row's CPU ms per item and whether it was measured: the recorded
    ``cpu_ms_per_item``, else (older results) the bound ``intra_op_threads`` busy for its
    wall time per item, else None."""
    settings = ceiling.get("settings") or {}
    if settings.get("cpu_ms_per_item") is not None:
        return float(settings["cpu_ms_per_item"]), True
    threads, rate = settings.get("intra_op_threads"), ceiling.get("items_per_s") or 0.0
    if threads and rate > 0:
        return threads * 1000.0 / rate, False
    return None, False


def ceiling_reason(row: Dict[str, Any], ceiling: Dict[str, Any], x: float, cores: int,
                   target: float) -> str:
    """Why a served row is ``x`` times its ceiling, from its CPU budget per item: the model
    stubs' CPU ms against the ceiling's own, the rest by group, the items/s that CPU cost
    allows with every core busy, and the cores left idle (when > :data:`IDLE_NOTABLE`, or
    when that CPU cost allows ``target`` x the ceiling: then idle cores are the miss)."""
    cost = budget(row, cores)
    if cost is None:
        return f"{x:.2f}x; no CPU split recorded for that point"
    parts = [f"{x:.2f}x; CPU per item {cost.total_ms:.2f} ms"]
    if "model" in cost.ms:
        parts[0] += (f": model stubs {cost.ms['model']:.2f} ms (preprocessing, Triton I/O in)"
                     + _ceiling_cpu(ceiling))
    rest = sum(v for g, v in cost.ms.items() if g != "model")
    if rest:
        parts.append(f"the rest {rest:.2f} ms ({cost.by_group(leave_out=('model',))})")
    bound = cost.cpu_bound_items_per_s / ceiling["items_per_s"]
    busy = "both cores" if cores == 2 else f"all {cores} cores"
    parts.append(f"even with {busy} busy, {cost.total_ms:.2f} ms/item caps it at "
                 f"{cost.cpu_bound_items_per_s:.0f} items/s = {bound:.2f}x ceiling")
    if bound >= target:  # the CPU cost allows the target: the cores were not all used
        parts.append(f"so the miss is cores not used: {cost.idle_cores:.2f} of {cores} idle, "
                     f"{cost.foreign_cores:.2f} used by other processes")
    elif cost.idle_cores > IDLE_NOTABLE:
        parts.append(f"{cost.idle_cores:.2f} of {cores} cores idle at that point")
    return "; ".join(parts)


def _ceiling_cpu(ceiling: Dict[str, Any]) -> str:
    """`` vs N ms for ONNX Runtime alone (...)``: the ceiling's CPU per item, or its bound
    (older results), or nothing."""
    base, measured = ceiling_ms_per_item(ceiling)
    if base is None:
        return ""
    batch = (ceiling.get("settings") or {}).get("batch_size", "?")
    if measured:
        return f" vs {base:.2f} ms for ONNX Runtime alone (ceiling, batch {batch})"
    return (f" vs <= {base:.2f} ms for ONNX Runtime alone (ceiling, batch {batch}; its CPU "
            "was not recorded in this run: threads x wall time)")
