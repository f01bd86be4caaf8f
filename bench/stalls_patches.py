"""The experiments of ``bench.stalls``, patched into the temporary model repository only.

The stubs' garbage-collection log (and, as a variant, ``gc.freeze()`` after the model loads)
appended to each ``model.py`` copy, with the reader of its log; and the model step's dynamic
batcher given a ``preferred_batch_size``. towhee_rt itself is not changed.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple


#: Appended to each model.py copy of the (temporary) repository: every collection of generation
#: 2, and any other over 5 ms, is logged as "pid instance start_ns ms generation collected".
GC_LOG_PATCH = """

# --- bench.stalls: garbage-collection log (experiment, not part of towhee_rt) ---
import gc as _stalls_gc
_STALLS_GC_LOG = os.environ.get("TOWHEE_STALLS_GC_LOG")
_stalls_start = [0]


def _stalls_gc_callback(phase, info):
    if phase == "start":
        _stalls_start[0] = time.monotonic_ns()
        return
    took = time.monotonic_ns() - _stalls_start[0]
    if _STALLS_GC_LOG and (info["generation"] == 2 or took > 5_000_000):
        with open(_STALLS_GC_LOG, "a") as f:
            f.write(f"{os.getpid()} {_stalls_start[0]} {took / 1e6:.1f} {info['generation']} "
                    f"{info['collected']}\\n")


_stalls_gc.callbacks.append(_stalls_gc_callback)
"""
#: Appended after GC_LOG_PATCH for ``stub_gc='freeze'``: after the model has loaded, one full
#: collection, then everything alive moves to the permanent generation (gc.freeze), so later
#: collections no longer traverse the hundreds of thousands of objects torch and timm import.
GC_FREEZE_PATCH = """
_stalls_initialize = TritonPythonModel.initialize


def _stalls_frozen_initialize(self, args):
    _stalls_initialize(self, args)
    _stalls_gc.collect()
    _stalls_gc.freeze()


TritonPythonModel.initialize = _stalls_frozen_initialize
"""


def patch_stubs(repo: Path, stub_gc: str) -> None:
    """Append the GC log (and, for ``stub_gc='freeze'``, the freeze) to each model.py copy of
    the temporary repository ``repo``: an experiment measured without changing towhee_rt."""
    for model_py in sorted(repo.glob("*/1/model.py")):
        text = model_py.read_text() + GC_LOG_PATCH
        if stub_gc == "freeze":
            text += GC_FREEZE_PATCH
        model_py.write_text(text)


def patch_preferred_batch(repo: Path, size: int) -> str:
    """Give the last step's dynamic batcher ``preferred_batch_size: size`` in the temporary
    repository ``repo`` (an experiment); returns the model patched."""
    configs = sorted(p for p in repo.glob("*/config.pbtxt") if "ensemble_scheduling"
                     not in p.read_text())
    target = configs[-1]  # steps are named <pipeline>_<index>_...: the last is the model
    text = target.read_text()
    if "dynamic_batching {" not in text:
        raise RuntimeError(f"{target}: no dynamic_batching block to patch")
    target.write_text(text.replace("dynamic_batching {",
                                   f"dynamic_batching {{\n  preferred_batch_size: {size}", 1))
    return target.parent.name


def read_gc_log(path: Path) -> List[Tuple[int, int, float, int, int]]:
    """(pid, start_ns, ms, generation, collected) of each logged collection."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                out.append((int(parts[0]), int(parts[1]), float(parts[2]), int(parts[3]),
                            int(parts[4])))
    return out
