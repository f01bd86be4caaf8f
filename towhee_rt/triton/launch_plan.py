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

#: glibc malloc settings for tritonserver and its Python stubs (they inherit its environment):
#: blocks of 128 KiB and more (decoded images, tensors) are always mmapped and unmapped when
#: freed, and free heap top over 128 KiB is returned. glibc's default raises the mmap threshold
#: to the largest block freed (up to 32 MiB), after which such blocks come from the heaps and
#: their pages stay with the process (bench/results/memory.md: figures and trade-off).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
#: Every variable through which a user chooses the allocator themselves; when the environment
#: already sets one, :func:`allocator_env` adds nothing.
ALLOCATOR_ENV_NAMES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                       "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES", "LD_PRELOAD")
#: The opt-out: ``TOWHEE_RT_ALLOCATOR=glibc`` runs the server with glibc's own defaults.
ALLOCATOR_SWITCH = "TOWHEE_RT_ALLOCATOR"
ALLOCATOR_CHOICES = ("tuned", "glibc")


def allocator_env(env: Mapping[str, str]) -> Dict[str, str]:
    """The allocator settings to add to ``env``, the environment tritonserver would otherwise
    get: :data:`ALLOCATOR_ENV`, or nothing when ``env`` chooses itself (any of
    :data:`ALLOCATOR_ENV_NAMES` set) or opts out (``TOWHEE_RT_ALLOCATOR=glibc``). Raises
    :class:`ServerError` for another value of ``TOWHEE_RT_ALLOCATOR``."""
    choice = env.get(ALLOCATOR_SWITCH, "tuned") or "tuned"
    if choice not in ALLOCATOR_CHOICES:
        raise ServerError(f"{ALLOCATOR_SWITCH}={choice!r}: expected one of "
                          f"{', '.join(ALLOCATOR_CHOICES)} (glibc: glibc malloc's own defaults, "
                          "no settings added)")
    if choice == "glibc" or any(env.get(name) for name in ALLOCATOR_ENV_NAMES):
        return {}
    return dict(ALLOCATOR_ENV)


def server_environment(base: Mapping[str, str], env: Mapping[str, str] = ()) -> Dict[str, str]:
    """tritonserver's environment on this host: ``base`` (the embedded server's), no bytecode,
    ``env`` over them, then the allocator settings (:func:`allocator_env`)."""
    merged = {**base, **NO_BYTECODE, **dict(env)}
    return {**merged, **allocator_env(merged)}


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
    return LaunchPlan(argv, server_environment(base_env, env), shm_prefix=prefix)


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
