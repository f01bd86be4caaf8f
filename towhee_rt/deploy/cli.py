"""``python -m towhee_rt.deploy kubernetes REPO --image IMAGE --out DIR`` (also ``towhee-rt deploy
kubernetes ...``): write the manifests.

Exit codes: 0 written, 2 for a usage error (no repository, no image, a bad value), with a
message saying what to do.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import ConfigError
from . import write_kubernetes
from .options import (DEFAULT_CPU_TARGET_PERCENT, DEFAULT_REPLICAS, DEFAULT_STARTUP_SECONDS,
                      KubernetesOptions)
from .pod import ADMIN_KEY_ITEM, API_KEY_ITEM

DESCRIPTION = """\
Write a kustomize base (one YAML file per object and kustomization.yaml) that runs a model
repository's container image on Kubernetes: a Deployment (the image's entrypoint, i.e.
tritonserver with towhee_rt's flags under its supervisor; probes on /v2/health/*; /dev/shm,
memory and CPU sized from the repository's instance counts; nvidia.com/gpu when a model runs on
a GPU), a Service (http 8000, grpc 8001, metrics 8002), a HorizontalPodAutoscaler on CPU, a
PodDisruptionBudget, and a ServiceMonitor with --service-monitor. With --kserve: a KServe
ServingRuntime and InferenceService instead. Apply with: kubectl apply -k DIR"""


SUMMARY = "Deployment manifests for a towhee_rt model repository."


def build_parser(prog: str = "python -m towhee_rt.deploy") -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` documents every flag)."""
    parser = argparse.ArgumentParser(prog=prog, description=SUMMARY)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the deploy targets and their flags to ``parser`` (also ``towhee-rt deploy``)."""
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    k8s = targets.add_parser("kubernetes", help="Kubernetes / KServe manifests",
                             description=DESCRIPTION,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    k8s.add_argument("repository", metavar="REPO",
                     help="the model repository inside the image (the directory "
                          "towhee_rt.build_model_repo or build_docker_image wrote, e.g. "
                          "CONTEXT/models): it is read to size the pod")
    k8s.add_argument("--image", help="the image built by towhee_rt.build_docker_image and "
                                     "pushed to a registry the cluster pulls from (required)")
    k8s.add_argument("--out", default="k8s", metavar="DIR",
                     help="directory to write the YAML files to (default: %(default)s)")
    k8s.add_argument("--name", help="name of the objects (a DNS label; default: the "
                                    "pipeline's name)")
    k8s.add_argument("--namespace", help="namespace written into every object (default: "
                                         "the one kubectl uses)")
    k8s.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS,
                     help="pods to run, the autoscaler's minimum (default: %(default)s)")
    k8s.add_argument("--max-replicas", type=int,
                     help="the autoscaler's maximum (default: twice --replicas); equal to "
                          "--replicas: no autoscaler, a fixed number of pods")
    k8s.add_argument("--cpu-target", type=int, default=DEFAULT_CPU_TARGET_PERCENT,
                     metavar="PERCENT", help="scale out when the pods' CPU use passes this "
                                             "share of their CPU request (default: %(default)s)")
    for kind, example in (("cpu", "'2' or '1500m'"), ("memory", "'4Gi' or '3072Mi'")):
        for bound in ("request", "limit"):
            k8s.add_argument(f"--{kind}-{bound}", metavar="QUANTITY",
                             help=f"the container's {kind} {bound}, e.g. {example} (default: "
                                  "computed from the repository's instance counts)")
    k8s.add_argument("--api-key-secret", metavar="SECRET",
                     help=f"require an API key for inference: the key is read from the Secret "
                          f"SECRET (key '{API_KEY_ITEM}'), mounted as a file; create it with "
                          f"kubectl create secret generic SECRET --from-file={API_KEY_ITEM}="
                          "api.key. No key is written into the manifests")
    k8s.add_argument("--admin-key-secret", metavar="SECRET",
                     help=f"open the admin APIs to holders of the key in Secret SECRET (key "
                          f"'{ADMIN_KEY_ITEM}'); without it they are closed (a random key "
                          "per start)")
    k8s.add_argument("--startup-seconds", type=int, default=DEFAULT_STARTUP_SECONDS,
                     help="how long a pod may take to load and warm up its models before it "
                          "is restarted (default: %(default)s)")
    k8s.add_argument("--service-monitor", action="store_true",
                     help="also write a prometheus-operator ServiceMonitor for Triton's "
                          "metrics (needs that operator's CRDs in the cluster)")
    k8s.add_argument("--kserve", action="store_true",
                     help="write a KServe ServingRuntime (Triton, protocol v2, this image) and "
                          "InferenceService instead of the plain objects")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Write the manifests the parsed ``args`` ask for; the exit code."""
    try:
        options = KubernetesOptions(
            image=args.image, name=args.name, namespace=args.namespace,
            replicas=args.replicas, max_replicas=args.max_replicas,
            cpu_target_percent=args.cpu_target, cpu_request=args.cpu_request,
            cpu_limit=args.cpu_limit, memory_request=args.memory_request,
            memory_limit=args.memory_limit, api_key_secret=args.api_key_secret,
            admin_key_secret=args.admin_key_secret, startup_seconds=args.startup_seconds,
            service_monitor=args.service_monitor, kserve=args.kserve)
        paths = write_kubernetes(args.repository, args.out, options=options)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    print(f"apply with: kubectl apply -k {args.out}")
    return 0
