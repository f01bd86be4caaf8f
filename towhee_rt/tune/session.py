"""The served side of a search: a scratch copy of the repository on a real tritonserver bound
to loopback, points applied by rewriting configs and reloading only the models that changed,
and steady load (:mod:`.load`) to measure it.

Reloading one step (Triton's repository API, explicit model control) costs that step's load
and warm-up; restarting the server would load every model. Each rewritten config carries a new
``towhee_rt_reload`` value so that Triton starts every instance afresh: a config that differs
only in its instance count would otherwise keep the old instances, sized (threads) for the old
count. The user's repository is never served or touched here.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from tritonclient.grpc import model_config_pb2 as pb

from ..errors import ServerError
from ..triton.admin import RELOAD_PARAMETER
from ..triton.config import write_config
from ..triton.server import TritonServer
from .load import SteadyLoad
from .space import ServedPipeline, Point, apply_point

#: Seconds a model gets to load after its config changed.
LOAD_TIMEOUT_S = 120.0


def scratch_copy(source: Path, target: Path) -> Path:
    """Copy repository ``source`` to ``target``: files hard-linked where the filesystem
    allows (model files can be large), ``config.pbtxt`` files always copied (they are
    rewritten, and a hard link would rewrite the original)."""
    def link_or_copy(src: str, dst: str) -> str:
        if os.path.basename(src) != "config.pbtxt":
            try:
                os.link(src, dst)
                return dst
            except OSError:
                pass
        return shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, symlinks=True)
    return target


class ServedSession:
    """A scratch copy of a repository, served on 127.0.0.1 until :meth:`close`; ``items``
    are what :meth:`load` sends to the ensemble of ``pipeline``."""

    def __init__(self, source: Path, configs: Mapping[str, pb.ModelConfig],
                 pipeline: ServedPipeline,
                 items: Sequence[Any], workdir: Path, ready_timeout: float = 180.0):
        self.pipeline = pipeline
        self.items = list(items)
        self.original = dict(configs)
        self.served: Dict[str, pb.ModelConfig] = dict(configs)
        self.repo = scratch_copy(source, workdir / "repo")
        # Unsupervised: the supervisor takes the stubs that a reload retires for dead ones and
        # loads their model again, in the middle of a measurement.
        self.server = TritonServer(self.repo, host="127.0.0.1", log_file=workdir / "server.log",
                                   ready_timeout=ready_timeout, supervise=False)
        self.startup_s = 0.0
        self.reloads: List[float] = []
        self._generation = 0

    def start(self) -> "ServedSession":
        """Start the server and wait until every model is ready (timed: :attr:`startup_s`)."""
        started = time.perf_counter()
        self.server.start_ready()
        self.startup_s = time.perf_counter() - started
        return self

    def close(self) -> None:
        """Stop the server (always safe to call)."""
        self.server.stop()

    # -- settings ------------------------------------------------------------------------------
    def apply(self, point: Point) -> float:
        """Serve ``point``'s settings: rewrite the configs that differ and reload those models
        (the ensemble first when its ``max_batch_size`` shrinks, else last); the seconds it
        took. Raises :class:`ServerError` (Triton's message) when a model fails to load; the
        models keep their previous settings then."""
        wanted = apply_point(self.original, self.pipeline, point)
        changed = [n for n in self.pipeline.steps if wanted[n] != self.served[n]]
        ensemble = self.pipeline.ensemble
        if wanted[ensemble] != self.served[ensemble]:
            shrinks = wanted[ensemble].max_batch_size < self.served[ensemble].max_batch_size
            changed = [ensemble] + changed if shrinks else changed + [ensemble]
        started = time.perf_counter()
        for name in changed:
            self._load(name, wanted[name])
        seconds = time.perf_counter() - started
        if changed:
            self.reloads.append(seconds)
        return seconds

    def _load(self, name: str, config: pb.ModelConfig) -> None:
        self._generation += 1
        on_disk = pb.ModelConfig()
        on_disk.CopyFrom(config)
        on_disk.parameters[RELOAD_PARAMETER].string_value = str(self._generation)
        write_config(self.repo, name, on_disk)
        ok, error = self.server.admin.load(name, LOAD_TIMEOUT_S)
        if not ok:
            write_config(self.repo, name, self.served[name])  # what is still being served
            raise ServerError(f"model {name} did not load with the new settings: {error}")
        self.served[name] = config

    # -- load ----------------------------------------------------------------------------------
    def load(self, concurrency: int) -> SteadyLoad:
        """Steady load of :attr:`items` on the pipeline, ``concurrency`` requests in flight
        (a context manager that starts and stops it)."""
        return SteadyLoad(self.server.grpc_url, self.pipeline.ensemble, self.items, concurrency)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (quoted when a point fails)."""
        return self.server.log_text()[-chars:]


def session_dir(base: Optional[Path]) -> Path:
    """A fresh temporary directory for the scratch repository and the server log."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="towhee_rt-tune-", dir=base))
