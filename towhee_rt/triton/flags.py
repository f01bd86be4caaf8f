"""The tritonserver command-line flags: one function for every way towhee_rt starts Triton.

:func:`server_flags` is used by the host launcher (:func:`towhee_rt.triton.server.build_command`),
by ``docker run`` (:func:`towhee_rt.triton.server.docker_command`) and, through
:func:`container_command`, by the generated Dockerfile's ``CMD``; Kubernetes manifests can take
:func:`container_command` as a container's ``command``. So a repository runs with the same
settings wherever it is served. Pure functions: nothing here starts a process. Example::

    >>> container_command()[:2]
    ['tritonserver', '--model-repository=/workspace/models']
"""
from __future__ import annotations

from typing import List

#: Python backend shared memory per model instance, and its growth step. Triton's 1 MiB
#: default makes every large image grow the pool in many small steps.
PYTHON_SHM_DEFAULT_BYTES = 16 * 1024 * 1024
PYTHON_SHM_GROWTH_BYTES = 16 * 1024 * 1024
#: tritonserver's own grace period for in-flight requests and open client connections (an
#: idle keep-alive client delays every graceful stop by this much); below stop()'s timeout.
EXIT_TIMEOUT_SECS = 5
#: Where container images hold the model repository.
CONTAINER_REPOSITORY = "/workspace/models"
#: Triton's standard ports, used inside containers and as the host defaults.
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
#: What a container binds: its network namespace is its own, so all addresses.
CONTAINER_HOST = "0.0.0.0"


def server_flags(model_repository: str, *, host: str = "127.0.0.1",
                 grpc_port: int = DEFAULT_GRPC_PORT, http_port: int = DEFAULT_HTTP_PORT,
                 metrics_port: int = DEFAULT_METRICS_PORT, log_verbose: int = 0,
                 gpu_metrics: bool = True) -> List[str]:
    """The tritonserver flags (without the binary) that serve ``model_repository``.

    ``model_repository`` is passed as given (make it absolute for a host server: the Python
    backend puts model directories on ``sys.path`` as written). ``host`` is the address all
    three endpoints bind (``'127.0.0.1'``: loopback only; ``'0.0.0.0'``: every interface).
    ``grpc_port``/``http_port``/``metrics_port`` are the endpoints' ports. ``log_verbose`` is
    Triton's ``--log-verbose`` level. ``gpu_metrics`` turns Triton's GPU metrics on (leave it
    off where no NVIDIA driver is present).
    """
    shm = (f"python,shm-default-byte-size={PYTHON_SHM_DEFAULT_BYTES}",
           f"python,shm-growth-byte-size={PYTHON_SHM_GROWTH_BYTES}")
    return [
        f"--model-repository={model_repository}",
        f"--grpc-address={host}", f"--grpc-port={int(grpc_port)}",
        f"--http-address={host}", f"--http-port={int(http_port)}",
        f"--metrics-address={host}", f"--metrics-port={int(metrics_port)}",
        "--allow-metrics=true", f"--allow-gpu-metrics={str(bool(gpu_metrics)).lower()}",
        # Our configs are complete; auto-complete would launch one extra Python stub per model
        # at load just to ask model.py for a config (1.4 s per model on this machine).
        "--disable-auto-complete-config",
        "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECS}", f"--log-verbose={int(log_verbose)}",
        *(f"--backend-config={item}" for item in shm),
    ]


def container_command(*, gpu_metrics: bool = True, log_verbose: int = 0) -> List[str]:
    """``['tritonserver', ...flags]`` for a container image holding the repository at
    ``/workspace/models``: every interface on Triton's standard ports 8000/8001/8002.

    The generated Dockerfile's ``CMD`` is this list; a Kubernetes container spec can use it as
    its ``command``. ``gpu_metrics`` defaults on because the images are NVIDIA's CUDA images
    run with ``--gpus``; ``log_verbose`` is Triton's ``--log-verbose`` level.
    """
    return ["tritonserver"] + server_flags(
        CONTAINER_REPOSITORY, host=CONTAINER_HOST, grpc_port=DEFAULT_GRPC_PORT,
        http_port=DEFAULT_HTTP_PORT, metrics_port=DEFAULT_METRICS_PORT,
        log_verbose=log_verbose, gpu_metrics=gpu_metrics)
