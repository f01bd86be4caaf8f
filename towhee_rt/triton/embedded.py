"""The tritonserver carried by the ``nvidia-pytriton`` wheel, made runnable on the host.

The wheel ships Triton (``pytriton/tritonserver/bin/tritonserver``), the Python backend and one
``triton_python_backend_stub`` per Python version under ``python_backend_stubs/X.Y/``. To run
it outside PyTriton, :func:`prepare_embedded_tritonserver`

1. copies the wheel's ``tritonserver/`` tree once into a cache directory (atomically: a
   temporary directory renamed into place, so concurrent first runs are safe),
2. puts the stub matching the running interpreter at ``backends/python/triton_python_backend_stub``,
3. builds the environment (:func:`stub_environment`): ``LD_LIBRARY_PATH`` starts with this
   interpreter's ``LIBDIR`` (where its ``libpython3.X.so`` lives; without it the stub embeds
   the system libpython with the venv's standard library and fails in odd places), then the
   wheel's ``nvidia_pytriton.libs``; ``PATH`` starts with the interpreter's ``bin/`` so the
   stub's Python sees the venv's packages;
4. turns bytecode writing off in the stubs (:func:`stop_bytecode_writes`), so that serving
   never writes ``__pycache__`` into the served repository.

Example::

    binary, backend_dir, env = prepare_embedded_tritonserver()
    subprocess.run([str(binary), "--help"], env=env)
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from ..accel.cache import cache_dir
from ..errors import ServerError

log = logging.getLogger("towhee_rt")

WHEEL = "nvidia-pytriton"
MIN_GLIBC = (2, 35)
STUB_NAME = "triton_python_backend_stub"
INSTALL_HINT = f"pip install {WHEEL}==0.7.0"
SYSTEM_TRITONSERVER = "/opt/tritonserver/bin/tritonserver"  # where NGC images have it
BACKEND_UTILS = "triton_python_backend_utils.py"
#: Appended to the backend's utilities module, which every stub imports before the model.
NO_BYTECODE_LINE = ("import sys as _towhee_rt_sys; _towhee_rt_sys.dont_write_bytecode = True"
                    "  # added by towhee_rt: stubs never write into the served repository\n")


def python_tag() -> str:
    """``'3.11'`` for the running interpreter."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def wheel_paths() -> Tuple[str, Path, Path]:
    """(version, ``pytriton/tritonserver`` dir, ``nvidia_pytriton.libs`` dir) of the wheel."""
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise ServerError(f"no tritonserver: the {WHEEL} package, which carries one, is not "
                          f"installed. Install it ({INSTALL_HINT}), or pass the path of a "
                          "tritonserver binary (--tritonserver PATH), or a Docker image "
                          "(--docker IMAGE).") from None
    server_dir = Path(dist.locate_file("pytriton")) / "tritonserver"
    libs_dir = Path(dist.locate_file(f"{WHEEL.replace('-', '_')}.libs"))
    if not (server_dir / "bin" / "tritonserver").is_file():
        raise ServerError(f"{WHEEL} {dist.version} is installed but {server_dir}/bin/tritonserver"
                          f" is missing; reinstall it ({INSTALL_HINT} --force-reinstall)")
    return dist.version, server_dir, libs_dir


def check_glibc(minimum: Tuple[int, int] = MIN_GLIBC) -> None:
    """Raise :class:`ServerError` unless the C library is glibc >= ``minimum``."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        found = tuple(int(part) for part in version.split(".")[:2])
    except (ValueError, OSError, AttributeError):
        name, found = "unknown", (0, 0)
    if name != "glibc" or found < minimum:
        raise ServerError(f"the embedded tritonserver needs glibc >= {minimum[0]}.{minimum[1]} "
                          f"(found {name} {'.'.join(map(str, found))}); run it in a container "
                          "instead (--docker IMAGE) or pass --tritonserver PATH")


def libpython_dir() -> Path:
    """The directory holding this interpreter's ``libpython3.X.so.1.0`` (needed by the stub)."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{python_tag()}.so.1.0"
    if (libdir / soname).exists() or (libdir / f"libpython{python_tag()}.so.1.0").exists():
        return libdir
    raise ServerError(f"the Python backend stub needs libpython{python_tag()}.so.1.0, which is "
                      f"not in {libdir} (this interpreter was built without --enable-shared); "
                      "use a Python built with shared libraries (e.g. PYTHON_CONFIGURE_OPTS="
                      "--enable-shared for pyenv) or the system package libpython3.X")


def stub_environment(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment in which the wheel's tritonserver and its Python backend stubs run.

    A copy of ``base`` (default ``os.environ``) whose ``LD_LIBRARY_PATH`` starts with this
    interpreter's ``LIBDIR`` (its ``libpython3.X.so``), then the wheel's ``nvidia_pytriton.libs``,
    and whose ``PATH`` starts with this interpreter's ``bin/`` (so the stubs' Python sees this
    environment's packages). Without the ``LIBDIR`` entry the stub embeds the system libpython
    with a venv's standard library and fails in odd places (PyTriton 0.7 as shipped fails with
    ``'_thread.RLock' object has no attribute '_recursion_count'``), so any process that runs
    Python-backend stubs from this wheel, PyTriton included, should get this environment.
    Raises :class:`ServerError` when the wheel or ``libpython`` is missing.
    """
    env = dict(os.environ if base is None else base)
    _, _, libs_dir = wheel_paths()
    env["LD_LIBRARY_PATH"] = _prepend(env.get("LD_LIBRARY_PATH", ""),
                                      [str(libpython_dir()), str(libs_dir)])
    env["PATH"] = _prepend(env.get("PATH", ""), [os.path.dirname(sys.executable)])
    return env


def _prepend(search_path: str, first: List[str]) -> str:
    """``first`` + the entries of ``search_path`` not in it (empty entries dropped)."""
    rest = [p for p in search_path.split(os.pathsep) if p and p not in first]
    return os.pathsep.join(first + rest)


def _install_tree(source: Path, stub: Path, target: Path) -> None:
    """Copy ``source`` with ``stub`` in place to ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tree = tmp / "tritonserver"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tree / "backends" / "python" / STUB_NAME)
        try:
            os.rename(tree, target)
        except OSError as exc:
            if not (target / "backends" / "python" / STUB_NAME).is_file():  # not a lost race
                raise ServerError(f"could not install tritonserver into {target} ({exc}); "
                                  "remove that directory and try again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_bytecode_writes(backend_dir: Path) -> None:
    """Make the Python backend's stubs in ``backend_dir`` write no ``__pycache__``.

    The stub embeds Python with an isolated configuration that ignores ``PYTHON*`` environment
    variables (``PYTHONDONTWRITEBYTECODE`` and ``PYTHONPYCACHEPREFIX`` have no effect there), so
    the switch goes into the module every stub imports first. Idempotent; atomic.
    """
    utils = backend_dir / "python" / BACKEND_UTILS
    text = utils.read_text()
    if NO_BYTECODE_LINE in text:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{BACKEND_UTILS}-", dir=utils.parent)
    with os.fdopen(fd, "w") as out:
        out.write(NO_BYTECODE_LINE + text)
    os.replace(tmp, utils)


def prepare_embedded_tritonserver(work_dir: Optional[Path] = None
                                  ) -> Tuple[Path, Path, Dict[str, str]]:
    """Make the wheel's tritonserver runnable; return ``(binary, backend_dir, env)``.

    ``work_dir`` is where the runnable copy lives (default: ``<cache>/tritonserver-<wheel
    version>-py<X.Y>``); an existing copy is reused. ``env`` is a full environment for
    :class:`subprocess.Popen`, based on ``os.environ``.
    """
    version, server_dir, _ = wheel_paths()
    check_glibc()
    stub = server_dir / "python_backend_stubs" / python_tag() / STUB_NAME
    if not stub.is_file():
        have = sorted(p.name for p in (server_dir / "python_backend_stubs").iterdir())
        raise ServerError(f"{WHEEL} {version} has no Python backend stub for Python "
                          f"{python_tag()} (it has: {', '.join(have)}); use one of those Python "
                          "versions, or pass --tritonserver PATH / --docker IMAGE")
    env = stub_environment()  # checks libpython before copying anything
    target = Path(work_dir) if work_dir else (
        cache_dir() / f"tritonserver-{version}-py{python_tag()}")
    binary = target / "bin" / "tritonserver"
    if not (target / "backends" / "python" / STUB_NAME).is_file():
        _install_tree(server_dir, stub, target)
    stop_bytecode_writes(target / "backends")
    return binary, target / "backends", env


def find_tritonserver(explicit: Optional[os.PathLike] = None
                      ) -> Tuple[Path, Optional[Path], Dict[str, str]]:
    """``(binary, backend dir or None for Triton's default, env)`` of the tritonserver to run.

    ``explicit`` (a path or a name on ``PATH``) wins; then the wheel's embedded server; then a
    ``tritonserver`` on ``PATH`` or in ``/opt/tritonserver`` (inside NGC images).
    """
    if explicit:
        found = shutil.which(str(explicit))
        if not found:
            raise ServerError(f"tritonserver binary {explicit} does not exist or is not "
                              "executable; pass the path of a tritonserver binary")
        return Path(found), None, dict(os.environ)
    try:
        return prepare_embedded_tritonserver()
    except ServerError:
        system = shutil.which("tritonserver") or shutil.which(SYSTEM_TRITONSERVER)
        if not system:
            raise
        log.warning("embedded tritonserver unavailable; using %s", system, exc_info=True)
        return Path(system), None, dict(os.environ)
