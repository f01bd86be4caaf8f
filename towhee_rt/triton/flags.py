"""The tritonserver command-line flags: one function for every way towhee_rt starts Triton.

:func:`server_flags` is used by the host launcher (:func:`towhee_rt.triton.commands.build_command`),
by ``docker run`` (:func:`towhee_rt.triton.commands.docker_command`) and, through
:func:`container_command`, by the generated Dockerfile's ``CMD``; Kubernetes manifests can take
:func:`container_command` as a container's ``command``. So a repository runs with the same
settings wherever it is served. Nothing here starts a process. Example::

    >>> container_command(admin_key="k")[:2]
    ['tritonserver', '--model-repository=/workspace/models']

Access: Triton restricts an API group to requests carrying a header with a given value
(``--http-restricted-api=<apis>:<header>=<value>``, ``--grpc-restricted-protocol=...``; over gRPC
the client sends the header as metadata ``triton-grpc-protocol-<header>``). The flags always
close the admin APIs (:data:`ADMIN_APIS`) to all but holders of an admin key, and close
inference and model configs to all but holders of ``api_key`` when one is given; health and
metadata stay open for probes and clients.
"""
from __future__ import annotations

import secrets
from typing import Dict, List, Optional

from ..errors import ConfigError

#: Python backend shared memory per model instance, and its growth step. Triton's 1 MiB
#: default makes every large image grow the pool in many small steps.
PYTHON_SHM_DEFAULT_BYTES = 16 * 1024 * 1024
PYTHON_SHM_GROWTH_BYTES = 16 * 1024 * 1024
#: tritonserver's grace period after SIGTERM, shared by three waits in this order: open HTTP
#: connections (an idle keep-alive client uses it all up), in-flight inferences, then unloading
#: the models. Unloading the timm resnet50 pipeline (2 instances) takes 4.3 s on 2 cores, so 5 s
#: raced it; 15 s leaves room for a loaded machine and larger models.
EXIT_TIMEOUT_SECS = 15
#: How long a graceful stop waits for tritonserver before it kills it (and its stubs).
STOP_TIMEOUT_SECS = EXIT_TIMEOUT_SECS + 10
#: Where container images hold the model repository.
CONTAINER_REPOSITORY = "/workspace/models"
#: Triton's standard ports, used inside containers and as the host defaults.
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
#: What a container binds: its network namespace is its own, so all addresses.
CONTAINER_HOST = "0.0.0.0"

#: The request header carrying the inference key (``api_key``).
API_KEY_HEADER = "towhee-api-key"
#: The request header carrying the admin key (``admin_key``).
ADMIN_KEY_HEADER = "towhee-admin-key"
#: Triton reads a restricted-protocol header over gRPC from metadata with this prefix.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
#: Open to everyone: readiness probes and clients reading model metadata.
OPEN_APIS = ("health", "metadata")
#: Open, or restricted to ``api_key`` when one is given. A model's config carries the
#: operators' params and file names, so it goes with inference rather than with metadata.
INFERENCE_APIS = ("inference", "model-config")
#: Restricted to the admin key, always. Shared memory: registering the Python backend's own
#: IPC region is a step of CVE-2025-23320; model-repository loads and unloads models;
#: statistics, trace and logging reveal or change how the server runs (Prometheus metrics on
#: the metrics port remain for monitoring).
ADMIN_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")


def server_flags(model_repository: str, *, host: str = "127.0.0.1",
                 grpc_port: int = DEFAULT_GRPC_PORT, http_port: int = DEFAULT_HTTP_PORT,
                 metrics_port: int = DEFAULT_METRICS_PORT, log_verbose: int = 0,
                 gpu_metrics: bool = True, api_key: Optional[str] = None,
                 admin_key: Optional[str] = None) -> List[str]:
    """The tritonserver flags (without the binary) that serve ``model_repository``.

    ``model_repository`` is passed as given (make it absolute for a host server: the Python
    backend puts model directories on ``sys.path`` as written). ``host`` is the address all
    three endpoints bind (``'127.0.0.1'``: loopback only; ``'0.0.0.0'``: every interface).
    ``grpc_port``/``http_port``/``metrics_port`` are the endpoints' ports. ``log_verbose`` is
    Triton's ``--log-verbose`` level. ``gpu_metrics`` turns Triton's GPU metrics on (leave it
    off where no NVIDIA driver is present). ``api_key`` and ``admin_key``: see
    :func:`restriction_flags` (``admin_key=None`` closes the admin APIs to everyone).
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
        # Explicit control, all models loaded at start: a model whose stub dies can be
        # reloaded through the (admin-only) repository API; not ready while it is unloaded.
        "--model-control-mode=explicit", "--load-model=*",
        "--strict-readiness=true", "--exit-on-error=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECS}", f"--log-verbose={int(log_verbose)}",
        *(f"--backend-config={item}" for item in shm),
        *restriction_flags(api_key=api_key, admin_key=admin_key),
    ]


def restriction_flags(api_key: Optional[str] = None,
                      admin_key: Optional[str] = None) -> List[str]:
    """The ``--http-restricted-api`` / ``--grpc-restricted-protocol`` flags.

    :data:`ADMIN_APIS` require header :data:`ADMIN_KEY_HEADER` = ``admin_key``; without one
    they get a fresh random key nobody is told, i.e. they are closed. :data:`INFERENCE_APIS`
    require :data:`API_KEY_HEADER` = ``api_key`` when one is given. Keys are checked with
    :func:`check_key`. The keys appear in tritonserver's argv (Triton takes them only as flags).
    """
    admin = check_key(admin_key, "admin_key") if admin_key is not None \
        else secrets.token_urlsafe(32)
    groups = [(ADMIN_APIS, ADMIN_KEY_HEADER, admin)]
    if api_key is not None:
        groups.append((INFERENCE_APIS, API_KEY_HEADER, check_key(api_key, "api_key")))
    out = []
    for apis, header, key in groups:
        # Triton 2.51's parser wants ':' before the header although its --help shows ','.
        setting = f"{','.join(apis)}:{header}={key}"
        out += [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]
    return out


def check_key(key: object, name: str = "api_key") -> str:
    """``key`` if it can be a header value: a non-empty ``str`` of printable ASCII without
    spaces; otherwise :class:`~towhee_rt.errors.ConfigError` saying what is wrong."""
    if not isinstance(key, str):
        raise ConfigError(f"{name} must be a string, got {type(key).__name__}")
    if not key:
        raise ConfigError(f"{name} is empty; pass a secret such as "
                          "secrets.token_urlsafe(32), or leave it out")
    bad = sorted({c for c in key if not 0x21 <= ord(c) <= 0x7e})
    if bad:
        raise ConfigError(f"{name} may hold printable ASCII characters only, no spaces or "
                          f"control characters (found {', '.join(map(repr, bad))}); "
                          "secrets.token_urlsafe(32) makes a suitable key")
    return key


def key_headers(protocol: str, api_key: Optional[str] = None,
                admin_key: Optional[str] = None) -> Dict[str, str]:
    """The request headers (``protocol='http'``) or gRPC metadata (``'grpc'``) that carry
    the given keys to a server started with these flags."""
    prefix = GRPC_HEADER_PREFIX if protocol == "grpc" else ""
    headers = {}
    if api_key is not None:
        headers[prefix + API_KEY_HEADER] = api_key
    if admin_key is not None:
        headers[prefix + ADMIN_KEY_HEADER] = admin_key
    return headers


def container_command(*, gpu_metrics: bool = True, log_verbose: int = 0,
                      api_key: Optional[str] = None,
                      admin_key: Optional[str] = None) -> List[str]:
    """``['tritonserver', ...flags]`` for a container image holding the repository at
    ``/workspace/models``: every interface on Triton's standard ports 8000/8001/8002.

    The generated image's entrypoint script runs this list, rendered at build time with
    placeholders for the keys it reads from the environment when the container starts
    (:mod:`towhee_rt.triton.docker`); a Kubernetes container spec can use it as its
    ``command``. ``gpu_metrics`` defaults on because the images are NVIDIA's CUDA images run
    with ``--gpus``; ``log_verbose`` is Triton's ``--log-verbose`` level; ``api_key`` and
    ``admin_key`` as in :func:`restriction_flags`.
    """
    return ["tritonserver"] + server_flags(
        CONTAINER_REPOSITORY, host=CONTAINER_HOST, grpc_port=DEFAULT_GRPC_PORT,
        http_port=DEFAULT_HTTP_PORT, metrics_port=DEFAULT_METRICS_PORT,
        log_verbose=log_verbose, gpu_metrics=gpu_metrics, api_key=api_key,
        admin_key=admin_key)
