"""towhee_rt.deploy: the generated Kubernetes objects validate against the official schemas
(kubernetes-validate, strict, pinned version) and carry the values computed from the repository."""
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import towhee_rt as towhee
from towhee_rt.deploy import (KUBERNETES_VERSION, KubernetesOptions, kubernetes_objects,
                              write_kubernetes)
from towhee_rt.deploy import pod as deploy_pod
from towhee_rt.deploy.yaml_files import KUSTOMIZATION
from towhee_rt.errors import ConfigError
from towhee_rt.triton import docker
from towhee_rt.triton.flags import EXIT_TIMEOUT_SECS, container_command

MIB = 1024 * 1024
BASH = shutil.which("bash")
IMAGE = "registry.example.com/image_embedding:v1"
#: Kinds that are CRDs (no official schema): their required fields are checked here.
CRD_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}


def _repo(path, **op_config):
    pipe = towhee.dummy_input().image_decode.cv2_rgb(op_config=op_config).as_function()
    return towhee.build_model_repo(pipe, path).path


@pytest.fixture(scope="module")
def cpu_repo(tmp_path_factory):
    """Two CPU instances of one model (plus the ensemble, which has none)."""
    return _repo(tmp_path_factory.mktemp("cpu") / "repo", instance_count=2)


@pytest.fixture(scope="module")
def gpu_repo(tmp_path_factory):
    """Two instances on each of GPUs 0 and 1: four instances, two GPUs."""
    return _repo(tmp_path_factory.mktemp("gpu") / "repo", instance_count=2, device_ids=[0, 1])


def _load(out: Path):
    """{file name: object} of every YAML file in ``out``."""
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}


def _validate_all(objects):
    """Validate every built-in object strictly; return the CRD objects."""
    crds = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            crds.append(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    return crds


def _by_kind(objects):
    return {obj["kind"]: obj for obj in objects}


def _container(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_validator_is_strict_and_catches_a_bad_manifest(cpu_repo):
    deployment = kubernetes_objects(cpu_repo, KubernetesOptions(image=IMAGE))[0]
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    _container(deployment)["startupProbes"] = _container(deployment).pop("startupProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("service_monitor", [False, True])
def test_cpu_repository_writes_a_valid_kustomize_base(cpu_repo, tmp_path, service_monitor):
    paths = write_kubernetes(cpu_repo, tmp_path, image=IMAGE, namespace="search",
                             service_monitor=service_monitor)
    files = _load(tmp_path)
    kustomization = files.pop(KUSTOMIZATION)
    assert paths[-1].name == KUSTOMIZATION
    assert kustomization["resources"] == [p.name for p in paths[:-1]]
    assert sorted(kustomization["resources"]) == sorted(files)  # lists every file written
    assert kustomization["namespace"] == "search"
    crds = _validate_all(files.values())
    kinds = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    optional = {"ServiceMonitor"} if service_monitor else set()
    assert {o["kind"] for o in files.values()} == kinds | optional
    assert len(crds) == int(service_monitor)
    assert all(o["metadata"]["namespace"] == "search" for o in files.values())
    for monitor in crds:  # the fields prometheus-operator's CRD requires, and what they match
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        service = files["service.yaml"]
        labels = monitor["spec"]["selector"]["matchLabels"]
        assert labels.items() <= service["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def test_cpu_values_are_computed_from_the_instance_counts(cpu_repo):
    objects = _by_kind(kubernetes_objects(cpu_repo, KubernetesOptions(image=IMAGE)))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = _container(objects["Deployment"])
    instances = 2
    shm = instances * 128 * MIB + 64 * MIB
    assert pod["volumes"][0] == {"name": "dshm", "emptyDir": {
        "medium": "Memory", "sizeLimit": f"{shm // MIB}Mi"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    memory = f"{(256 * MIB + instances * 512 * MIB + shm) // MIB}Mi"  # shm counts as memory
    assert container["resources"] == {
        "requests": {"cpu": f"{250 + 500 * instances}m", "memory": memory},
        "limits": {"cpu": f"{500 + 1000 * instances}m", "memory": memory}}
    assert "tolerations" not in pod and "nvidia.com/gpu" not in yaml.safe_dump(objects)


def test_probes_ports_and_graceful_stop(cpu_repo):
    objects = _by_kind(kubernetes_objects(cpu_repo, KubernetesOptions(image=IMAGE)))
    container = _container(objects["Deployment"])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http", 8000), ("grpc", 8001), ("metrics", 8002)]
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe",
                        "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pause > 0 and pod["terminationGracePeriodSeconds"] > pause + EXIT_TIMEOUT_SECS
    service = objects["Service"]["spec"]
    assert {p["name"]: (p["port"], p["targetPort"], p["appProtocol"]) for p in service["ports"]} \
        == {"http": (8000, "http", "http"), "grpc": (8001, "grpc", "grpc"),
            "metrics": (8002, "metrics", "http")}
    assert service["selector"].items() <= pod_labels(objects["Deployment"]).items()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 1000
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def pod_labels(deployment):
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_replicas_autoscaler_and_disruption_budget(cpu_repo):
    objects = _by_kind(kubernetes_objects(cpu_repo, KubernetesOptions(
        image=IMAGE, replicas=3, max_replicas=7, cpu_target_percent=60)))
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 7)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": objects["Deployment"]["metadata"]["name"]}
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization",
                                                       "averageUtilization": 60}
    assert "replicas" not in objects["Deployment"]["spec"]  # the HPA owns the count
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels(objects["Deployment"]).items()

    fixed = _by_kind(kubernetes_objects(cpu_repo, KubernetesOptions(image=IMAGE, replicas=3,
                                                                    max_replicas=3)))
    assert "HorizontalPodAutoscaler" not in fixed and fixed["Deployment"]["spec"]["replicas"] == 3


def test_gpu_repository_asks_for_its_gpus(gpu_repo, tmp_path):
    write_kubernetes(gpu_repo, tmp_path, image=IMAGE)
    files = _load(tmp_path)
    _validate_all(o for name, o in files.items() if name != KUSTOMIZATION)
    deployment = files["deployment.yaml"]
    resources = _container(deployment)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 2 and "nvidia.com/gpu" not in \
        resources["requests"]
    instances = 2 * 2  # count per listed GPU
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == \
        f"{instances * 128 + 64}Mi"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        deployment["spec"]["template"]["spec"]["tolerations"]


def test_gpu_ids_are_container_ids(tmp_path):
    repo = _repo(tmp_path / "repo", device_ids=[1])
    deployment = kubernetes_objects(repo, KubernetesOptions(image=IMAGE))[0]
    assert _container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 2  # ids 0 and 1


def test_resources_can_be_overridden_and_are_checked(cpu_repo):
    deployment = kubernetes_objects(cpu_repo, KubernetesOptions(
        image=IMAGE, cpu_request="3", memory_request="6Gi", memory_limit="8Gi"))[0]
    resources = _container(deployment)["resources"]
    assert resources["requests"] == {"cpu": "3", "memory": "6Gi"}
    assert resources["limits"] == {"cpu": "3", "memory": "8Gi"}  # raised to the request
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    for bad, message in (({"cpu_limit": "lots"}, "not a Kubernetes quantity"),
                         ({"memory_request": "4Gi", "memory_limit": "2Gi"}, "below the memory"),
                         ({"memory_request": "100Mi", "memory_limit": "200Mi"},
                          "cannot hold the 320Mi /dev/shm")):
        with pytest.raises(ConfigError, match=message):
            kubernetes_objects(cpu_repo, KubernetesOptions(image=IMAGE, **bad))


@pytest.mark.parametrize("choices, message", [
    ({"image": ""}, "no image given"),
    ({"image": "a b"}, "not an image reference"),
    ({"replicas": 0}, "replicas must be a whole number >= 1"),
    ({"replicas": 3, "max_replicas": 2}, "must be at least replicas"),
    ({"name": "Image_Embedding"}, "not a Kubernetes name"),
    ({"api_key_secret": "Keys!"}, "not a Secret name"),
    ({"cpu_target_percent": 150}, "1 to 100"),
])
def test_bad_choices_are_config_errors(choices, message):
    with pytest.raises(ConfigError, match=message):
        KubernetesOptions(**{"image": IMAGE, **choices})


def test_no_repository_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        kubernetes_objects(tmp_path / "missing", KubernetesOptions(image=IMAGE))


def test_keys_come_from_secrets_and_never_appear_in_the_manifests(cpu_repo, tmp_path):
    write_kubernetes(cpu_repo, tmp_path, image=IMAGE, api_key_secret="embed-keys",
                     admin_key_secret="embed-admin")
    text = "".join(p.read_text() for p in tmp_path.glob("*.yaml"))
    for leak in ("restricted", "towhee-api-key", "towhee-admin-key", "TOWHEE_RT_API_KEY\n",
                 "secretKeyRef"):
        assert leak not in text
    deployment = _load(tmp_path)["deployment.yaml"]
    env = {e["name"]: e["value"] for e in _container(deployment)["env"]}
    assert set(env) == {"TOWHEE_RT_API_KEY_FILE", "TOWHEE_RT_ADMIN_KEY_FILE"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for item, secret in (("api-key", "embed-keys"), ("admin-key", "embed-admin")):
        assert volumes[item]["secret"]["secretName"] == secret
        mount = next(m for m in _container(deployment)["volumeMounts"] if m["name"] == item)
        assert mount["readOnly"] and env[f"TOWHEE_RT_{item.split('-')[0].upper()}_KEY_FILE"] \
            == f"{mount['mountPath']}/{volumes[item]['secret']['items'][0]['path']}"


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_container_runs_exactly_the_flags_of_container_command(cpu_repo, tmp_path):
    """Run the Deployment's container args the way the image does: the entrypoint script
    (rendered as build_docker_image renders it), the manifest's environment with the Secret
    files mounted, and a tritonserver that prints its argv."""
    deployment = kubernetes_objects(cpu_repo, KubernetesOptions(
        image=IMAGE, api_key_secret="keys", admin_key_secret="admin"))[0]
    container = _container(deployment)
    # The image's ENTRYPOINT (NVIDIA's, then the script) runs with no arguments.
    assert "command" not in container and "args" not in container
    nvidia, shell, script_path = docker.IMAGE_ENTRYPOINT
    assert nvidia == "/opt/nvidia/nvidia_entrypoint.sh"
    root = tmp_path / "image"
    script = root / Path(script_path).relative_to("/")
    script.parent.mkdir(parents=True)
    script.write_text(docker.render_entrypoint())  # no supervisor beside it: runs tritonserver
    fake = root / "bin" / "tritonserver"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nfor arg in "${0##*/}" "$@"; do printf "%s\\n" "$arg"; '
                    'done\n')
    fake.chmod(0o755)
    keys = {"TOWHEE_RT_API_KEY_FILE": "api-9x", "TOWHEE_RT_ADMIN_KEY_FILE": "adm-7y"}
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    for variable in container["env"]:
        local = root / Path(variable["value"]).relative_to("/")  # where the Secret is mounted
        local.parent.mkdir(parents=True)
        local.write_text(keys[variable["name"]] + "\n")
        env[variable["name"]] = str(local)
    result = subprocess.run([shell, str(script)], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == container_command(api_key="api-9x", admin_key="adm-7y")


def test_kserve_writes_a_triton_runtime_and_an_inference_service(cpu_repo, tmp_path):
    paths = write_kubernetes(cpu_repo, tmp_path, image=IMAGE, kserve=True, replicas=2,
                             max_replicas=5)
    files = _load(tmp_path)
    assert files.pop(KUSTOMIZATION)["resources"] == [p.name for p in paths[:-1]]
    runtime, isvc = files["servingruntime.yaml"], files["inferenceservice.yaml"]
    assert _validate_all(files.values()) == [isvc, runtime]  # CRDs only: checked below
    # The fields KServe's CRDs require, and that the two refer to each other.
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model == {"modelFormat": {"name": "triton"}, "protocolVersion": "v2",
                     "runtime": runtime["metadata"]["name"]}
    assert {"name": "triton", "version": "2", "autoSelect": False} in \
        runtime["spec"]["supportedModelFormats"]
    assert "v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    assert "args" not in container and "command" not in container  # the image's entrypoint
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 5)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == \
        "RawDeployment"
    # The pod KServe builds from the two (runtime containers and volumes, predictor pod
    # fields) is a valid Pod, with the plain Deployment's container.
    pod_fields = {k: v for k, v in predictor.items()
                  if k not in {"model", "minReplicas", "maxReplicas", "scaleMetric",
                               "scaleTarget"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {**pod_fields, "containers": runtime["spec"]["containers"],
                    "volumes": runtime["spec"]["volumes"]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    plain = _container(kubernetes_objects(cpu_repo, KubernetesOptions(image=IMAGE))[0])
    assert {**container, "name": deploy_pod.CONTAINER_NAME} == plain
