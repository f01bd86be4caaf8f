"""What a user chooses for a Kubernetes deployment, checked once; errors say what to do."""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

from ..errors import ConfigError

#: The Kubernetes release whose schemas the generated objects are validated against (tests).
KUBERNETES_VERSION = "1.31.0"
DEFAULT_REPLICAS = 2
#: The HPA scales out when the pods' CPU use passes this share of their CPU request.
DEFAULT_CPU_TARGET_PERCENT = 70
#: How long a pod may take to load and warm up its models before Kubernetes restarts it. The
#: resnet50 pipeline is ready after ~4 s on 2 cores; large models (and pulling them into
#: memory from a slow disk) take minutes, so the default is generous.
DEFAULT_STARTUP_SECONDS = 600

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class KubernetesOptions:
    """The choices behind the manifests (see :func:`towhee_rt.deploy.kubernetes_objects`).

    ``image``: the image ``towhee_rt.build_docker_image`` built, pushed where the cluster
    pulls from. ``name``: the objects' name (a DNS label; default: from the pipeline's name).
    ``namespace``: written into every object and the kustomization (default: none, i.e. the
    one ``kubectl`` uses). ``replicas``: pods to start with, the HPA's minimum;
    ``max_replicas``: the HPA's maximum (default ``2 x replicas``; equal to ``replicas``: no
    HPA). ``cpu_target_percent``: the HPA's CPU utilization target. ``cpu_request`` ...
    ``memory_limit``: Kubernetes quantities in place of the computed ones.
    ``api_key_secret`` / ``admin_key_secret``: Secrets (key ``api-key`` / ``admin-key``)
    mounted as files for the image's entrypoint. ``startup_seconds``: the startup probe's
    budget. ``service_monitor``: also write a prometheus-operator ServiceMonitor.
    ``kserve``: write a KServe ServingRuntime and InferenceService instead of the plain objects.
    """

    image: str
    name: Optional[str] = None
    namespace: Optional[str] = None
    replicas: int = DEFAULT_REPLICAS
    max_replicas: Optional[int] = None
    cpu_target_percent: int = DEFAULT_CPU_TARGET_PERCENT
    cpu_request: Optional[str] = None
    cpu_limit: Optional[str] = None
    memory_request: Optional[str] = None
    memory_limit: Optional[str] = None
    api_key_secret: Optional[str] = None
    admin_key_secret: Optional[str] = None
    startup_seconds: int = DEFAULT_STARTUP_SECONDS
    service_monitor: bool = False
    kserve: bool = False

    def __post_init__(self):
        image = self.image.strip() if isinstance(self.image, str) else ""
        if not image:
            raise ConfigError("no image given: pass the image that towhee_rt.build_docker_image "
                              "built and you pushed to a registry the cluster pulls from, e.g. "
                              "--image registry.example.com/image_embedding:v1")
        if any(c.isspace() for c in image) or image != self.image:
            raise ConfigError(f"image {self.image!r} is not an image reference: pass the image "
                              "that towhee_rt.build_docker_image built and you pushed, e.g. "
                              "--image registry.example.com/image_embedding:v1")
        for field, low in (("replicas", 1), ("cpu_target_percent", 1), ("startup_seconds", 10)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{field} must be a whole number >= {low}, got {value!r}")
        if self.cpu_target_percent > 100:
            raise ConfigError(f"cpu_target_percent is a share of the CPU request, 1 to 100, got "
                              f"{self.cpu_target_percent}")
        if self.max_replicas is not None and (
                not isinstance(self.max_replicas, int) or self.max_replicas < self.replicas):
            raise ConfigError(f"max_replicas ({self.max_replicas!r}) must be at least replicas "
                              f"({self.replicas}); equal to it turns autoscaling off")
        if self.name is not None:
            check_name(self.name, "name")
        if self.namespace is not None:
            check_name(self.namespace, "namespace")
        for field in ("api_key_secret", "admin_key_secret"):
            value = getattr(self, field)
            if value is not None and not _DNS_SUBDOMAIN.match(value):
                raise ConfigError(f"{field} {value!r} is not a Secret name (lowercase letters, "
                                  "digits, '-' and '.'); create it with kubectl create secret "
                                  "generic NAME --from-file=...")

    @property
    def hpa_max(self) -> int:
        """The HPA's maximum replica count."""
        return self.max_replicas if self.max_replicas is not None else 2 * self.replicas

    @property
    def autoscale(self) -> bool:
        """Whether an HPA is written (``max_replicas`` above ``replicas``)."""
        return self.hpa_max > self.replicas


def check_name(value: str, what: str) -> str:
    """``value`` if it is a DNS label (what Services and namespaces need), else
    :class:`ConfigError`."""
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ConfigError(f"{what} {value!r} is not a Kubernetes name: up to 63 lowercase "
                          "letters, digits and '-', starting with a letter, e.g. "
                          "'image-embedding'")
    return value


def default_name(pipeline: str) -> str:
    """A DNS label made from the pipeline's (ensemble's) name: ``'pipeline'`` stays,
    ``'Image_Embedding'`` becomes ``'image-embedding'``."""
    name = re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-")[:63].rstrip("-")
    if not name or not name[0].isalpha():
        name = f"towhee-{name}"[:63].rstrip("-")
    return check_name(name, "the name made from the pipeline's name (pass name=)")
