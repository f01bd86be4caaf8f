"""What one start of a tritonserver runs: its argv, environment, shared-memory prefix and
container name (:class:`LaunchPlan`), on this host (:func:`host_plan`) or in Docker
(:func:`docker_plan`). Prepares the embedded tritonserver when needed; starts nothing."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..errors import ServerError
from . import procs
from .commands import build_command, docker_command, docker_engine_available
from .embedded import find_tritonserver
from .ports import warn_exposure

#: For stubs that honour it (the embedded server's do not: see
#: :func:`~.embedded.stop_bytecode_writes`): write no bytecode into the served repository.
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """The argv and environment of one start; ``shm_prefix`` names the Python backend's
    regions of a host server, ``container`` the container of a ``docker run``."""

    argv: List[str]
    env: Dict[str, str]
    shm_prefix: Optional[str] = None
    container: Optional[str] = None


def _port_args(ports: Mapping[str, int]) -> Dict[str, int]:
    return dict(grpc_port=ports["gRPC"], http_port=ports["HTTP"], metrics_port=ports["metrics"])


def host_plan(repository: Path, *, host: str, ports: Mapping[str, int],
              keys: Mapping[str, Optional[str]], tritonserver: Optional[Path] = None,
              log_verbose: int = 0, extra_args: Sequence[str] = (),
              env: Mapping[str, str] = ()) -> LaunchPlan:
    """Run ``tritonserver`` (default: the embedded one) on this host; ``env`` overrides."""
    binary, backend_dir, base_env = find_tritonserver(tritonserver)
    # Only the wheel's embedded server comes with its own backend directory.
    warn_exposure(host, embedded=tritonserver is None and backend_dir is not None,
                  api_key=keys.get("api_key"))
    prefix = procs.shm_prefix()
    argv = build_command(binary, repository, host=host, backend_directory=backend_dir,
                         log_verbose=log_verbose, gpu_metrics=os.path.exists("/dev/nvidiactl"),
                         extra_args=extra_args, shm_region_prefix=prefix, **_port_args(ports),
                         **keys)
    return LaunchPlan(argv, {**base_env, **NO_BYTECODE, **dict(env)}, shm_prefix=prefix)


def docker_plan(image: str, repository: Optional[Path], *, host: str,
                ports: Mapping[str, int], keys: Mapping[str, Optional[str]],
                shm_size: str = "1g", log_verbose: int = 0, extra_args: Sequence[str] = (),
                env: Mapping[str, str] = ()) -> LaunchPlan:
    """``docker run`` ``image`` (``repository`` mounted read-only, when given). Raises
    :class:`ServerError` naming the command when no Docker engine is reachable."""
    warn_exposure(host, embedded=False, api_key=keys.get("api_key"))
    name = f"towhee_rt-{os.getpid()}-{ports['gRPC']}"
    argv = docker_command(image, model_repository=repository, host=host, shm_size=shm_size,
                          name=name, log_verbose=log_verbose, extra_args=extra_args,
                          **_port_args(ports), **keys)
    if not docker_engine_available():
        raise ServerError("cannot run the container: no Docker engine is reachable (is "
                          "docker installed and its daemon running?). Command: "
                          + " ".join(argv))
    return LaunchPlan(argv, {**os.environ, **dict(env)}, container=name)
