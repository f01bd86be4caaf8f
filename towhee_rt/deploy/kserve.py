"""KServe objects: a namespaced ``ServingRuntime`` (Triton, protocol v2) that runs the pipeline's
image, and the ``InferenceService`` that uses it.

Why a runtime of our own rather than KServe's ``kserve-tritonserver``: KServe appends the
runtime's ``args`` to the InferenceService's (``--model-store=/mnt/models --http-port=8080``
...), which would add a second, empty model repository and other ports to the flags the image
runs; and it expects a ``storageUri`` to download models from, while the image carries its
repository. Our runtime runs the very container of the plain Deployment
(:func:`towhee_rt.deploy.pod.container`), so both ways serve with the same flags.

The InferenceService asks for KServe's ``RawDeployment`` mode (a Deployment and an HPA, like
the plain manifests): Knative's serverless mode allows one port only and, depending on its
version and feature flags, refuses ``preStop`` hooks and memory-backed ``emptyDir`` volumes.
"""
from __future__ import annotations

from typing import Dict, List

from .manifests import metadata
from .options import KubernetesOptions

#: KServe looks for the serving container under this name.
KSERVE_CONTAINER = "kserve-container"
MODEL_FORMAT = "triton"
PROTOCOL = "v2"


def runtime_name(name: str) -> str:
    """The ServingRuntime's name for pipeline objects named ``name``."""
    return f"{name}-triton"


def serving_runtime(options: KubernetesOptions, name: str, pod: Dict) -> Dict:
    """The ``ServingRuntime``: the pod's container (renamed for KServe), its volumes and
    tolerations; Prometheus annotations point KServe's scraping at Triton's metrics port."""
    container = {**pod["containers"][0], "name": KSERVE_CONTAINER}
    spec = {
        "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "2", "autoSelect": False}],
        "protocolVersions": [PROTOCOL, "grpc-v2"],
        "multiModel": False,
        "annotations": {"prometheus.kserve.io/port": str(_port(container, "metrics")),
                        "prometheus.kserve.io/path": "/metrics"},
        "containers": [container],
        "volumes": pod["volumes"],
    }
    if "tolerations" in pod:
        spec["tolerations"] = pod["tolerations"]
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": metadata(runtime_name(name), options.namespace), "spec": spec}


def inference_service(options: KubernetesOptions, name: str, pod: Dict) -> Dict:
    """The ``InferenceService``: model format ``triton``, protocol ``v2``, our runtime;
    replicas and CPU autoscaling as in the plain manifests; the pod-level settings (security
    context, grace period, no service-account token) that a ServingRuntime cannot hold."""
    meta = metadata(name, options.namespace)
    meta["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment",
                           "serving.kserve.io/autoscalerClass": "hpa"}
    pod_level = ("automountServiceAccountToken", "enableServiceLinks",
                 "terminationGracePeriodSeconds", "securityContext")
    predictor = {
        "minReplicas": options.replicas, "maxReplicas": options.hpa_max,
        "scaleMetric": "cpu", "scaleTarget": options.cpu_target_percent,
        **{key: pod[key] for key in pod_level},
        "model": {"modelFormat": {"name": MODEL_FORMAT}, "protocolVersion": PROTOCOL,
                  "runtime": runtime_name(name)},
    }
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": meta, "spec": {"predictor": predictor}}


def kserve_objects(options: KubernetesOptions, name: str, pod: Dict) -> List[Dict]:
    """The ServingRuntime and the InferenceService, in the order to apply them."""
    return [serving_runtime(options, name, pod), inference_service(options, name, pod)]


def _port(container: Dict, port_name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port_name)
