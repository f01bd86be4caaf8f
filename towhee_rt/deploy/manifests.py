"""The plain Kubernetes objects: Deployment, Service, HorizontalPodAutoscaler,
PodDisruptionBudget and, when asked, a prometheus-operator ServiceMonitor. Pure functions from
:class:`~towhee_rt.deploy.options.KubernetesOptions` and a pod spec to dicts."""
from __future__ import annotations

from typing import Dict, Optional

from .options import KubernetesOptions
from .pod import PORTS, labels, selector

#: Extra time past the startup probe's budget before a rollout counts as failed.
ROLLOUT_MARGIN_SECONDS = 120
#: Scale in one pod per this many seconds, after this stabilization: a pod is slow to start
#: (models load and warm up), so the HPA should not drop capacity on a short lull.
SCALE_DOWN_PERIOD_SECONDS = 60
SCALE_DOWN_STABILIZATION_SECONDS = 300
METRICS_INTERVAL = "15s"


def metadata(name: str, namespace: Optional[str]) -> Dict:
    """An object's ``metadata``: name, labels and the namespace when one is given."""
    meta = {"name": name, "labels": labels(name)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def deployment(options: KubernetesOptions, name: str, pod: Dict) -> Dict:
    """The Deployment. With an HPA it leaves ``replicas`` out (as Kubernetes' HPA guide
    advises: each ``kubectl apply`` would otherwise reset the HPA's choice); the HPA raises the
    count to its minimum. Rolling updates add a pod before removing one (``maxUnavailable: 0``),
    so capacity never drops while the new pods load their models."""
    spec = {
        "selector": {"matchLabels": selector(name)},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": options.startup_seconds + ROLLOUT_MARGIN_SECONDS,
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": labels(name),
                         "annotations": {"kubectl.kubernetes.io/default-container":
                                         pod["containers"][0]["name"]}},
            "spec": pod,
        },
    }
    if not options.autoscale:
        spec = {"replicas": options.replicas, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(name, options.namespace), "spec": spec}


def service(options: KubernetesOptions, name: str) -> Dict:
    """The ClusterIP Service: HTTP, gRPC (``appProtocol: grpc``) and metrics, by name."""
    protocols = {"http": "http", "grpc": "grpc", "metrics": "http"}
    ports = [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP",
              "appProtocol": protocols[port_name]} for port_name, port in PORTS]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(name, options.namespace),
            "spec": {"type": "ClusterIP", "selector": selector(name), "ports": ports}}


def horizontal_pod_autoscaler(options: KubernetesOptions, name: str) -> Dict:
    """The ``autoscaling/v2`` HPA: ``replicas`` to ``max_replicas`` pods on CPU utilization.
    (Scaling on queue time instead, ``nv_inference_queue_duration_us`` through a
    prometheus-adapter, is described in docs/deploy.md.)"""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, options.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.replicas, "maxReplicas": options.hpa_max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": options.cpu_target_percent}}}],
            "behavior": {"scaleDown": {
                "stabilizationWindowSeconds": SCALE_DOWN_STABILIZATION_SECONDS,
                "policies": [{"type": "Pods", "value": 1,
                              "periodSeconds": SCALE_DOWN_PERIOD_SECONDS}]}},
        },
    }


def pod_disruption_budget(options: KubernetesOptions, name: str) -> Dict:
    """The ``policy/v1`` PDB: voluntary evictions (node drains, upgrades) take one pod at a
    time. ``maxUnavailable: 1`` rather than ``minAvailable``: with one replica a
    ``minAvailable: 1`` budget would block every drain."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(name, options.namespace),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}}}


def service_monitor(options: KubernetesOptions, name: str) -> Dict:
    """A prometheus-operator ``ServiceMonitor`` (a CRD) scraping Triton's ``/metrics`` on the
    Service's ``metrics`` port. The metrics port serves metrics only: the admin APIs are on the
    HTTP/gRPC ports and stay closed without the admin key."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": metadata(name, options.namespace),
            "spec": {"selector": {"matchLabels": selector(name)},
                     "endpoints": [{"port": "metrics", "path": "/metrics",
                                    "interval": METRICS_INTERVAL}]}}
