"""The pod that serves a repository's image: one container running the image's entrypoint.

Why the entrypoint and not :func:`~towhee_rt.triton.flags.container_command` as the container's
``command``: the entrypoint script holds that very list (rendered by
:func:`towhee_rt.triton.docker.render_entrypoint` from ``container_command``, so the two cannot
drift) and adds what a bare ``command`` cannot: it reads the keys from files (a Kubernetes
Secret mounted read-only, so no key is ever written into a manifest), draws a random admin key
per start when none is given (a key fixed in a manifest would be readable by everyone who can
read the Deployment), and runs tritonserver under the supervisor, which reloads a model whose
Python stub died (Triton 2.51 keeps reporting ready with a dead stub, so no probe would notice)
and exits 1 when a model keeps dying, so that Kubernetes restarts the pod. The container sets
neither ``command`` nor ``args``: the image's ``ENTRYPOINT``
(:data:`towhee_rt.triton.docker.IMAGE_ENTRYPOINT`: NVIDIA's entrypoint, which sets up CUDA
forward compatibility, then the script) runs with no arguments, exactly as ``docker run IMAGE``.

Security: the pod runs as NVIDIA's ``triton-server`` user (uid/gid 1000, present in the NGC
tritonserver images), without privilege escalation, with every capability dropped and the
runtime's default seccomp profile; no service-account token is mounted. The root filesystem
stays writable (``readOnlyRootFilesystem: false``): NVIDIA's entrypoint scripts and the
operators' libraries (torch and the Hugging Face stack write caches under ``$HOME``) were not
verified against a read-only root, and no cluster or image is available here to prove it; as
uid 1000 the container cannot write the image's system or model files anyway.
"""
from __future__ import annotations

import math
from typing import Dict, List

from ..triton.flags import (DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT,
                            EXIT_TIMEOUT_SECS, STOP_TIMEOUT_SECS)
from .options import KubernetesOptions
from .sizing import MIB, Resources, Sizing

CONTAINER_NAME = "tritonserver"
#: NVIDIA's tritonserver images carry the user ``triton-server`` with this uid and gid.
TRITON_UID = 1000
#: Named ports: Services and the ServiceMonitor refer to them by name.
PORTS = (("http", DEFAULT_HTTP_PORT), ("grpc", DEFAULT_GRPC_PORT),
         ("metrics", DEFAULT_METRICS_PORT))
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
PROBE_PERIOD_SECONDS = 5
#: The preStop pause: the pod is taken out of the Service's endpoints while it sleeps, so the
#: load balancers stop sending new requests before tritonserver receives SIGTERM.
PRESTOP_SECONDS = 5
#: preStop, then the supervisor's whole stop (tritonserver's EXIT_TIMEOUT_SECS for in-flight
#: requests and unloading, then killing what is left), and a margin before SIGKILL.
TERMINATION_GRACE_SECONDS = PRESTOP_SECONDS + STOP_TIMEOUT_SECS + 5
assert TERMINATION_GRACE_SECONDS > PRESTOP_SECONDS + EXIT_TIMEOUT_SECS
#: Where the key Secrets are mounted, and the key each Secret must hold.
SECRETS_DIR = "/run/secrets/towhee-rt"
API_KEY_ITEM, ADMIN_KEY_ITEM = "api-key", "admin-key"


def labels(name: str) -> Dict[str, str]:
    """The labels every object carries; the first one selects the pods."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "tritonserver",
            "app.kubernetes.io/managed-by": "towhee_rt"}


def selector(name: str) -> Dict[str, str]:
    """The label selector of the pods (a subset of :func:`labels` that never changes)."""
    return {"app.kubernetes.io/name": name}


def container(options: KubernetesOptions, sizing: Sizing, resources: Resources) -> dict:
    """The tritonserver container: the image's entrypoint, named ports, probes on Triton's
    health endpoints, resources, ``/dev/shm``, the key files and the preStop pause."""
    env: List[dict] = []
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    for secret, item, variable in ((options.api_key_secret, API_KEY_ITEM, "TOWHEE_RT_API_KEY_FILE"),
                                   (options.admin_key_secret, ADMIN_KEY_ITEM,
                                    "TOWHEE_RT_ADMIN_KEY_FILE")):
        if secret:
            env.append({"name": variable, "value": f"{SECRETS_DIR}/{item}/{item}"})
            mounts.append({"name": item, "mountPath": f"{SECRETS_DIR}/{item}", "readOnly": True})

    def probe(path: str, period: int, failures: int, timeout: int) -> dict:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
                "timeoutSeconds": timeout, "failureThreshold": failures, "successThreshold": 1}

    spec = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"}
                  for name, port in PORTS],
        # Ready means loaded and warmed up (strict readiness): until then, the startup probe.
        "startupProbe": probe(READY_PATH, PROBE_PERIOD_SECONDS,
                              math.ceil(options.startup_seconds / PROBE_PERIOD_SECONDS), 3),
        "readinessProbe": probe(READY_PATH, PROBE_PERIOD_SECONDS, 2, 3),
        "livenessProbe": probe(LIVE_PATH, 10, 3, 5),
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sleep", str(PRESTOP_SECONDS)]}}},
        "resources": resources.as_dict(sizing.gpus),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "readOnlyRootFilesystem": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if env:
        spec["env"] = env
    return spec


def pod_spec(options: KubernetesOptions, sizing: Sizing, resources: Resources) -> dict:
    """The pod: :func:`container`, the memory-backed ``/dev/shm`` sized from the repository,
    the key Secrets as read-only files, non-root security settings, the grace period, and a
    toleration of GPU nodes' usual taint when a model runs on a GPU."""
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                             "sizeLimit": f"{sizing.shm_bytes // MIB}Mi"}}]
    for secret, item in ((options.api_key_secret, API_KEY_ITEM),
                         (options.admin_key_secret, ADMIN_KEY_ITEM)):
        if secret:
            # 0440 with fsGroup: readable by the server's group only.
            volumes.append({"name": item, "secret": {
                "secretName": secret, "defaultMode": 0o440,
                "items": [{"key": item, "path": item}]}})
    spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRITON_UID,
                            "runAsGroup": TRITON_UID, "fsGroup": TRITON_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container(options, sizing, resources)],
        "volumes": volumes,
    }
    if sizing.gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}]
    return spec
