"""How big a pod must be for a model repository: Python-backend instances, GPUs, ``/dev/shm``,
memory and CPU, read from the repository's own ``config.pbtxt`` files.

Where the numbers come from (``bench/results/soak.md``: the timm resnet50 pipeline, ONNX,
three Python-backend instances (one decoder, two resnet50), 10 minutes of mixed load on 2 cores):

- ``/dev/shm``: each instance starts with a :data:`~towhee_rt.triton.flags.PYTHON_SHM_DEFAULT_BYTES`
  (16 MiB) pool that grows in 16 MiB steps and never shrinks. The three pools were 48 MiB at
  start, 112 MiB under 4 clients, and 208 MiB after a burst of 28 concurrent clients (about
  70 MiB per instance); one image of the largest size the decoder accepts (``max_pixels``)
  adds about 64 MiB more to the pools it passes through (docs/security.md, "Memory", measured in
  ``tests/integration/test_security.py``). Hence :data:`SHM_PER_INSTANCE_BYTES` = 128 MiB
  (16 MiB + 64 MiB for a largest image + 48 MiB of concurrency growth) and
  :data:`SHM_MARGIN_BYTES`, one more instance's worth for a stub the supervisor is replacing
  while the old one's region still exists. A pool that cannot grow fails that request only.
- memory: the anonymous RSS of tritonserver and its three stubs was 1.0 GiB at start, about
  1.15 GiB steady and 1.62 GiB at the burst's peak (1655 MiB). :data:`MEMORY_SERVER_BYTES` +
  3 x :data:`MEMORY_PER_INSTANCE_BYTES` = 1.75 GiB covers that peak. A memory-backed
  ``emptyDir`` is charged to the container's memory, so the ``/dev/shm`` size is added on top.
  Larger models need more per instance: pass ``memory_request``/``memory_limit``.
- CPU: a model instance runs one batch at a time on one thread: in ``bench/results/results.md``
  (served clip, 4 or more requests in flight) each embedding instance kept 0.9 of a core busy,
  the decoder 0.06 and tritonserver at most 0.05. So the limit is one core per instance and the
  request half of that (the HPA scales at a share of the request), plus the server's share.

Triton starts ``count`` instances per listed GPU for a ``KIND_GPU`` group, so those count
``count x len(gpus)``. GPU ids are ids inside the container: a model on ``device_ids=(1,)``
needs two GPUs visible, so the pod asks for ``max(id) + 1`` GPUs.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Optional

from tritonclient.grpc import model_config_pb2 as pb

from ..errors import ConfigError

MIB = 1024 * 1024
#: ``/dev/shm`` per Python-backend instance, and the pod's margin (see the module docstring).
SHM_PER_INSTANCE_BYTES = 128 * MIB
SHM_MARGIN_BYTES = 64 * MIB
#: Memory of tritonserver itself and per Python-backend instance (the soak's figures).
MEMORY_SERVER_BYTES = 256 * MIB
MEMORY_PER_INSTANCE_BYTES = 512 * MIB
#: CPU in millicores: the server's share, and per instance, requested and as a limit.
CPU_SERVER_REQUEST_M, CPU_SERVER_LIMIT_M = 250, 500
CPU_PER_INSTANCE_REQUEST_M, CPU_PER_INSTANCE_LIMIT_M = 500, 1000

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
            "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50,
            "Ei": 2 ** 60}


@dataclasses.dataclass(frozen=True)
class Resources:
    """A container's CPU and memory requests and limits, as Kubernetes quantities."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    def as_dict(self, gpus: int = 0) -> dict:
        """The container's ``resources`` field; ``nvidia.com/gpu`` as a limit when ``gpus``."""
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        if gpus:
            limits["nvidia.com/gpu"] = gpus
        return {"requests": {"cpu": self.cpu_request, "memory": self.memory_request},
                "limits": limits}


@dataclasses.dataclass(frozen=True)
class Sizing:
    """What a repository needs: Python-backend ``instances``, ``gpus`` to ask for (0: CPU
    only), the ``/dev/shm`` ``shm_bytes`` and the default :class:`Resources`."""

    instances: int
    gpus: int
    shm_bytes: int
    resources: Resources


def size_repository(configs: Mapping[str, pb.ModelConfig]) -> Sizing:
    """The :class:`Sizing` of a repository's configs (:func:`towhee_rt.triton.config.
    read_repository`): instance counts from every non-ensemble model's ``instance_group``."""
    instances, max_gpu = 0, -1
    for config in configs.values():
        if config.platform == "ensemble":
            continue
        groups = list(config.instance_group) or [pb.ModelInstanceGroup(count=1)]
        for group in groups:
            count = max(group.count, 1)
            if group.kind == pb.ModelInstanceGroup.KIND_GPU:
                gpus = list(group.gpus) or [0]
                instances += count * len(gpus)
                max_gpu = max(max_gpu, *gpus)
            else:
                instances += count
    if instances == 0:
        raise ConfigError("the repository holds only an ensemble and no model to run: give the "
                          "directory that towhee_rt.build_model_repo(pipe, path) wrote")
    shm = instances * SHM_PER_INSTANCE_BYTES + SHM_MARGIN_BYTES
    memory = MEMORY_SERVER_BYTES + instances * MEMORY_PER_INSTANCE_BYTES + shm
    resources = Resources(
        cpu_request=f"{CPU_SERVER_REQUEST_M + instances * CPU_PER_INSTANCE_REQUEST_M}m",
        cpu_limit=f"{CPU_SERVER_LIMIT_M + instances * CPU_PER_INSTANCE_LIMIT_M}m",
        memory_request=f"{memory // MIB}Mi", memory_limit=f"{memory // MIB}Mi")
    return Sizing(instances=instances, gpus=max_gpu + 1, shm_bytes=shm, resources=resources)


def parse_quantity(value: str, what: str) -> float:
    """A Kubernetes quantity (``'500m'``, ``'2'``, ``'1536Mi'``, ``'2G'``) as a number (cores or
    bytes); :class:`ConfigError` naming ``what`` when it is not one."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ConfigError(f"{what} {value!r} is not a Kubernetes quantity: write e.g. '500m' or "
                          "'2' for CPU (cores), '1536Mi' or '2Gi' for memory")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def override(defaults: Resources, cpu_request: Optional[str] = None,
             cpu_limit: Optional[str] = None, memory_request: Optional[str] = None,
             memory_limit: Optional[str] = None, shm_bytes: int = 0) -> Resources:
    """``defaults`` with the given values in place. Raises :class:`ConfigError` for a value that
    is not a quantity, a limit below its request (Kubernetes refuses those), or a memory limit
    that cannot hold ``shm_bytes`` of ``/dev/shm`` (a memory-backed volume counts against it)."""
    chosen = dataclasses.replace(defaults, **{
        key: str(value).strip() for key, value in
        (("cpu_request", cpu_request), ("cpu_limit", cpu_limit),
         ("memory_request", memory_request), ("memory_limit", memory_limit))
        if value is not None})
    if cpu_request is not None and cpu_limit is None:
        chosen = dataclasses.replace(chosen, cpu_limit=_at_least(chosen.cpu_limit,
                                                                 chosen.cpu_request, "cpu"))
    if memory_request is not None and memory_limit is None:
        chosen = dataclasses.replace(chosen, memory_limit=_at_least(
            chosen.memory_limit, chosen.memory_request, "memory"))
    for kind in ("cpu", "memory"):
        request = parse_quantity(getattr(chosen, f"{kind}_request"), f"{kind} request")
        limit = parse_quantity(getattr(chosen, f"{kind}_limit"), f"{kind} limit")
        if limit < request:
            raise ConfigError(f"the {kind} limit {getattr(chosen, f'{kind}_limit')} is below the "
                              f"{kind} request {getattr(chosen, f'{kind}_request')}: raise the "
                              "limit or lower the request")
    if parse_quantity(chosen.memory_limit, "memory limit") <= shm_bytes:
        raise ConfigError(f"the memory limit {chosen.memory_limit} cannot hold the "
                          f"{math.ceil(shm_bytes / MIB)}Mi /dev/shm volume, which counts against "
                          "it: raise the memory limit")
    return chosen


def _at_least(limit: str, request: str, kind: str) -> str:
    """The default ``limit``, or ``request`` when a user's request is above it."""
    above = parse_quantity(request, f"{kind} request") > parse_quantity(limit, f"{kind} limit")
    return request if above else limit
