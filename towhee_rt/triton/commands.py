"""The argv of a tritonserver: on this host (:func:`build_command`) or in a container
(:func:`docker_command`), and whether a Docker engine can run the latter
(:func:`docker_engine_available`). Every flag comes from
:func:`~towhee_rt.triton.flags.server_flags`, shared with the generated image's entrypoint;
nothing is started here."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import List, Optional, Sequence, Union

from .flags import (CONTAINER_REPOSITORY, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT,
                    DEFAULT_METRICS_PORT, server_flags)
from .procs import shm_prefix_flag

PathLike = Union[str, os.PathLike]


def build_command(binary: PathLike, model_repository: PathLike, *, host: str = "127.0.0.1",
                  grpc_port: int = DEFAULT_GRPC_PORT, http_port: int = DEFAULT_HTTP_PORT,
                  metrics_port: int = DEFAULT_METRICS_PORT,
                  backend_directory: Optional[PathLike] = None, log_verbose: int = 0,
                  gpu_metrics: bool = True, extra_args: Sequence[str] = (),
                  api_key: Optional[str] = None, admin_key: Optional[str] = None,
                  shm_region_prefix: Optional[str] = None) -> List[str]:
    """The argv that runs ``binary`` on ``model_repository`` (made absolute: the Python
    backend puts model directories on ``sys.path`` as given). Starts nothing; ``api_key`` and
    ``admin_key`` as in :func:`towhee_rt.triton.flags.restriction_flags`;
    ``shm_region_prefix`` names the Python backend's shared-memory regions."""
    argv = [str(binary)] + server_flags(
        os.path.abspath(model_repository), host=host, grpc_port=grpc_port,
        http_port=http_port, metrics_port=metrics_port, log_verbose=log_verbose,
        gpu_metrics=gpu_metrics, api_key=api_key, admin_key=admin_key)
    if shm_region_prefix:
        argv.append(shm_prefix_flag(shm_region_prefix))
    if backend_directory is not None:
        argv.append(f"--backend-directory={backend_directory}")
    return argv + list(extra_args)


#: The entrypoint of NVIDIA's tritonserver images (it prints the banner, checks the driver and
#: sets up CUDA forward compatibility, then execs its arguments).
NVIDIA_ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"


def docker_command(image: str, *, model_repository: Optional[PathLike] = None,
                   host: str = "127.0.0.1", grpc_port: int = DEFAULT_GRPC_PORT,
                   http_port: int = DEFAULT_HTTP_PORT, metrics_port: int = DEFAULT_METRICS_PORT,
                   shm_size: str = "1g", gpus: Optional[str] = "all",
                   name: Optional[str] = None, log_verbose: int = 0,
                   extra_args: Sequence[str] = (), api_key: Optional[str] = None,
                   admin_key: Optional[str] = None) -> List[str]:
    """The ``docker run`` argv serving ``image``'s ``/workspace/models`` (or
    ``model_repository`` mounted there read-only) with host networking. It runs
    ``tritonserver`` with :func:`~towhee_rt.triton.flags.server_flags` itself, through NVIDIA's
    entrypoint (:data:`NVIDIA_ENTRYPOINT`) and not the entrypoint script of towhee_rt's images
    (which would refuse the restriction flags it carries), so any NGC tritonserver image
    works. Starts nothing."""
    argv = ["docker", "run", "--rm", f"--entrypoint={NVIDIA_ENTRYPOINT}"]
    if gpus:
        argv.append(f"--gpus={gpus}")
    argv += [f"--shm-size={shm_size}", "--net=host"]
    if name:
        argv.append(f"--name={name}")
    if model_repository is not None:
        argv += ["-v", f"{os.path.abspath(model_repository)}:{CONTAINER_REPOSITORY}:ro"]
    return argv + [image, "tritonserver"] + server_flags(
        CONTAINER_REPOSITORY, host=host, grpc_port=grpc_port, http_port=http_port,
        metrics_port=metrics_port, log_verbose=log_verbose, api_key=api_key,
        admin_key=admin_key) + list(extra_args)


def docker_engine_available(timeout: float = 10.0) -> bool:
    """Whether ``docker info`` reaches a Docker engine."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
