"""Kubernetes manifests for a model repository's container image.

A pure function from a repository on disk and a few choices to Kubernetes objects (dicts), and
a writer of those as a kustomize base. Nothing here talks to a cluster::

    from towhee_rt.deploy import write_kubernetes
    write_kubernetes('repo/', 'k8s/', image='registry.example.com/image_embedding:v1')
    # $ kubectl apply -k k8s/

or ``python -m towhee_rt.deploy kubernetes repo/ --image IMAGE --out k8s/``. The objects:
a Deployment running the image's entrypoint (:mod:`towhee_rt.deploy.pod` says why), a
Service, a HorizontalPodAutoscaler, a PodDisruptionBudget and, when asked, a ServiceMonitor;
or, with ``kserve=True``, a KServe ServingRuntime and InferenceService. ``/dev/shm``, memory,
CPU and GPUs are sized from the repository's instance counts (:mod:`towhee_rt.deploy.sizing`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from ..triton.config import read_repository
from .kserve import kserve_objects
from .manifests import (deployment, horizontal_pod_autoscaler, pod_disruption_budget, service,
                        service_monitor)
from .options import KUBERNETES_VERSION, KubernetesOptions, default_name
from .pod import pod_spec
from .sizing import Sizing, override, size_repository
from .yaml_files import write_base

__all__ = ["KUBERNETES_VERSION", "KubernetesOptions", "Sizing", "kubernetes_objects",
           "repository_sizing", "write_kubernetes"]


def repository_sizing(repository) -> Sizing:
    """The :class:`~towhee_rt.deploy.sizing.Sizing` of a model repository on disk."""
    return size_repository(read_repository(repository))


def kubernetes_objects(repository, options: KubernetesOptions) -> List[Dict]:
    """The Kubernetes objects (dicts, in the order to apply them) that serve ``repository``
    (the directory :func:`towhee_rt.build_model_repo` wrote, the one inside ``options.image``).

    Raises :class:`~towhee_rt.errors.ConfigError` when the directory holds no repository or a
    resource override is invalid.
    """
    configs = read_repository(repository)
    sizing = size_repository(configs)
    ensembles = sorted(n for n, c in configs.items() if c.platform == "ensemble")
    name = options.name or default_name(ensembles[0] if ensembles else Path(repository).name)
    resources = override(sizing.resources, options.cpu_request, options.cpu_limit,
                         options.memory_request, options.memory_limit, sizing.shm_bytes)
    pod = pod_spec(options, sizing, resources)
    if options.kserve:
        return kserve_objects(options, name, pod)
    objects = [deployment(options, name, pod), service(options, name)]
    if options.autoscale:
        objects.append(horizontal_pod_autoscaler(options, name))
    objects.append(pod_disruption_budget(options, name))
    if options.service_monitor:
        objects.append(service_monitor(options, name))
    return objects


def write_kubernetes(repository, out, image: Optional[str] = None,
                     options: Optional[KubernetesOptions] = None, **choices) -> List[Path]:
    """Write :func:`kubernetes_objects` as a kustomize base in ``out`` (one file per object
    and ``kustomization.yaml``, the last of the returned paths). Give either ``options`` or
    ``image`` and the :class:`KubernetesOptions` fields as keywords (``replicas=3``,
    ``max_replicas=8``, ``namespace='search'``, ``api_key_secret='embed-keys'``,
    ``memory_limit='4Gi'``, ``service_monitor=True``, ``kserve=True`` ...)."""
    if options is None:
        options = KubernetesOptions(image=image, **choices)
    elif image is not None or choices:
        raise TypeError("give options or image= and keywords, not both")
    return write_base(kubernetes_objects(repository, options), out, options.namespace)
