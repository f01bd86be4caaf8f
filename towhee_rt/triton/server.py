"""Start a tritonserver on a model repository, wait until it is ready, stop it.

The server is, by precedence: ``docker_image`` (``docker run --rm --gpus=all --shm-size=1g
--net=host IMAGE tritonserver --model-repository=/workspace/models ...`` as in Towhee's guide),
``tritonserver`` (that binary), else the one carried by ``nvidia-pytriton``
(:mod:`towhee_rt.triton.embedded`). Endpoints bind ``host`` (default ``127.0.0.1``; Triton
alone binds ``0.0.0.0``); every other flag comes from :mod:`towhee_rt.triton.flags`, shared
with the generated Dockerfile. The admin APIs (shared memory, model repository, statistics,
trace, logging) need an admin key, random per start unless given; inference needs ``api_key``
when one is given. The child dies with the parent (``PR_SET_PDEATHSIG``: with the
*thread* that started it, so start servers from a long-lived thread), runs in its own session
so a terminal's Ctrl-C reaches only us, and logs to a file that errors quote (argv, ports and
log reading: :mod:`.commands`, :mod:`.ports`, :mod:`.server_log`).

A host server is supervised (:mod:`towhee_rt.triton.supervisor`): a model whose Python stub
dies or hangs is reloaded, readiness is false meanwhile, and :attr:`TritonServer.events` says
what happened. Nothing is left behind: its stubs are killed and its shared-memory regions
(named ``towhee_rt_<pid>_<n>_...``) removed when it stops, when tritonserver crashes, and, by a
small watchdog process, when the process that started it is killed; a start removes the
regions that dead processes left. Example::

    with TritonServer("repo/") as server:   # free loopback ports
        print(server.grpc_url, server.model_states())

:func:`serve` starts one and returns it once every model is ready (``towhee_rt.serve``).
"""
from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ..errors import ServerError
from . import procs
from .admin import TritonAdmin
from .commands import PathLike, build_command, docker_command
from .embedded import find_tritonserver
from .flags import (DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT,
                    STOP_TIMEOUT_SECS, check_key, key_headers)
# Defined here before flags.py existed; still importable from this module.
from .flags import (EXIT_TIMEOUT_SECS, PYTHON_SHM_DEFAULT_BYTES,  # noqa: F401
                    PYTHON_SHM_GROWTH_BYTES)
from .ports import find_free_port  # noqa: F401  (imported from here by callers)
from .ports import resolve_ports, warn_exposure
from .server_log import ServerStartError, loading_models, read_log, start_error
from .supervisor import Supervisor, only_pinned_left
from .supervisor_main import standalone_command

log = logging.getLogger("towhee_rt")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 == PR_SET_PDEATHSIG


class TritonServer:
    """One tritonserver process on ``model_repository``: start, wait ready, query, stop.

    Ports left ``None`` (or 0) get free loopback ports; a port given explicitly must be free.
    ``extra_args`` are appended to the tritonserver flags, ``env`` overrides environment
    variables. ``log_file`` defaults to a kept temporary file whose path errors quote.
    ``api_key``: inference (and model configs) require it in the ``towhee-api-key`` header
    (``Client(api_key=...)`` sends it). ``admin_key``: the admin APIs' key; without one each
    :meth:`start` draws a random key that only this object knows (:attr:`admin_key`).
    ``supervise`` (default on; host servers only): reload a model whose stub dies or hangs
    (:class:`~towhee_rt.triton.supervisor.Supervisor`); ``on_event`` is called with each of
    its events (from its thread), which :attr:`events` also lists.
    """

    def __init__(self, model_repository: Optional[PathLike], *, host: str = "127.0.0.1",
                 grpc_port: Optional[int] = None, http_port: Optional[int] = None,
                 metrics_port: Optional[int] = None, tritonserver: Optional[PathLike] = None,
                 docker_image: Optional[str] = None, log_file: Optional[PathLike] = None,
                 log_verbose: int = 0, ready_timeout: float = 120.0,
                 extra_args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
                 shm_size: str = "1g", api_key: Optional[str] = None,
                 admin_key: Optional[str] = None, supervise: bool = True,
                 on_event: Optional[Callable[[dict], None]] = None):
        if model_repository is None and docker_image is None:
            raise ServerError("no model repository given; build one with "
                              "towhee_rt.build_model_repo(pipe, 'repo/') and pass its path")
        self.api_key = None if api_key is None else check_key(api_key, "api_key")
        self._fixed_admin_key = None if admin_key is None else check_key(admin_key, "admin_key")
        #: The admin APIs' key of the running server (random per start unless given).
        self.admin_key: Optional[str] = self._fixed_admin_key
        self.model_repository = Path(model_repository) if model_repository else None
        self.host = host
        self.tritonserver = Path(tritonserver) if tritonserver else None
        self.docker_image = docker_image
        self.log_verbose = log_verbose
        self.ready_timeout = ready_timeout
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.shm_size = shm_size
        self._requested = {"gRPC": grpc_port, "HTTP": http_port, "metrics": metrics_port}
        self.ports: Dict[str, int] = {}
        self.log_file = Path(log_file) if log_file else None
        self._process: Optional[subprocess.Popen] = None
        self._container: Optional[str] = None
        self.command: List[str] = []  # the argv of the last start()
        self._stopped = False
        self.supervise = supervise
        self.on_event = on_event
        #: The Python backend's region prefix of the last start() (host servers).
        self.shm_prefix: Optional[str] = None
        self._admin: Optional[TritonAdmin] = None
        self._supervisor: Optional[Supervisor] = None
        self._watchdog: Optional[subprocess.Popen] = None
        self._watchdog_pipe: Optional[int] = None

    # ------------------------------------------------------------------ endpoints
    @property
    def grpc_url(self) -> str:
        """``'127.0.0.1:8001'``: what tritonclient.grpc and ``dc(...).remote(url=...)`` take."""
        return self._endpoint("gRPC")

    @property
    def http_url(self) -> str:
        """``'127.0.0.1:8000'``: what tritonclient.http takes."""
        return self._endpoint("HTTP")

    @property
    def metrics_url(self) -> str:
        """``'http://127.0.0.1:8002/metrics'``: Prometheus metrics."""
        return f"http://{self._endpoint('metrics')}/metrics"

    @property
    def admin_key_random(self) -> bool:
        """Whether :attr:`admin_key` is drawn at each start (no ``admin_key`` was given)."""
        return self._fixed_admin_key is None

    @property
    def pid(self) -> Optional[int]:
        """The process id of tritonserver (or of ``docker run``), once started."""
        return self._process.pid if self._process else None

    def _endpoint(self, label: str) -> str:
        if label not in self.ports:
            raise ServerError("the server is not started: call start() first")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.ports[label]}"

    # ------------------------------------------------------------------ lifecycle
    def _prepare(self) -> Tuple[List[str], Dict[str, str]]:
        """The argv and environment for this server's ports and mode."""
        ports = dict(grpc_port=self.ports["gRPC"], http_port=self.ports["HTTP"],
                     metrics_port=self.ports["metrics"])
        keys = dict(api_key=self.api_key, admin_key=self.admin_key)
        if self.docker_image:
            warn_exposure(self.host, embedded=False, api_key=self.api_key)
            return self._docker_argv(ports, keys), {**os.environ, **self.env}
        binary, backend_dir, env = find_tritonserver(self.tritonserver)
        # Only the wheel's embedded server comes with its own backend directory.
        warn_exposure(self.host, embedded=self.tritonserver is None and backend_dir is not None,
                      api_key=self.api_key)
        self.shm_prefix = procs.shm_prefix()
        argv = build_command(binary, self.model_repository, host=self.host,
                             backend_directory=backend_dir, log_verbose=self.log_verbose,
                             gpu_metrics=os.path.exists("/dev/nvidiactl"),
                             extra_args=self.extra_args, shm_region_prefix=self.shm_prefix,
                             **ports, **keys)
        return argv, {**env, **self.env}

    def _docker_argv(self, ports: Dict[str, int], keys: Dict[str, Optional[str]]) -> List[str]:
        from .docker import docker_engine_available

        name = f"towhee_rt-{os.getpid()}-{ports['grpc_port']}"
        argv = docker_command(self.docker_image, model_repository=self.model_repository,
                              host=self.host, shm_size=self.shm_size, name=name,
                              log_verbose=self.log_verbose, extra_args=self.extra_args,
                              **ports, **keys)
        if not docker_engine_available():
            raise ServerError("cannot run the container: no Docker engine is reachable (is "
                              "docker installed and its daemon running?). Command: "
                              + " ".join(argv))
        self._container = name
        return argv

    def _check_repository(self) -> None:
        repo = self.model_repository
        if repo is None:
            return
        if not repo.is_dir():
            raise ServerError(f"model repository {repo} does not exist or is not a directory; "
                              "build one with towhee_rt.build_model_repo(pipe, "
                              f"'{repo}') or pass the right path")
        if not any(child.is_dir() for child in repo.iterdir()):
            raise ServerError(f"model repository {repo} has no model directories")

    def start(self) -> "TritonServer":
        """Launch the process (returns at once; see :meth:`wait_ready`)."""
        if self._process is not None and self._process.poll() is None:
            raise ServerError(f"tritonserver is already running (pid {self._process.pid})")
        self._check_repository()
        self.ports = resolve_ports(self.host, self._requested)
        self.admin_key = self._fixed_admin_key or secrets.token_urlsafe(32)
        self._admin = TritonAdmin(self.http_url, key_headers(
            "http", api_key=self.api_key, admin_key=self.admin_key))
        self.shm_prefix = None
        argv, env = self._prepare()
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="towhee_rt-tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        if self.shm_prefix:
            count, nbytes = procs.remove_stale_regions()
            if count:
                log.info("removed %d shared-memory region(s) (%.0f MiB) left by towhee_rt "
                         "processes that are gone", count, nbytes / 2**20)
        self.command = argv
        self._stopped = False
        open(self.log_file, "wb").close()
        with open(self.log_file, "ab") as log_out:  # append: the watchdog may write too
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=_die_with_parent, close_fds=True)
        self._start_watchdog()
        if self.supervise and self.shm_prefix:
            self._supervisor = Supervisor(
                self._process.pid, self._admin, shm_prefix=self.shm_prefix,
                on_event=self.on_event, load_timeout=self.ready_timeout).start()
        return self

    def _start_watchdog(self) -> None:
        """A small process that cleans up after us if this process dies without stop()."""
        read_end, self._watchdog_pipe = os.pipe()  # not inherited by tritonserver (PEP 446)
        argv = standalone_command("watchdog", "--group", str(self._process.pid))
        if self.shm_prefix:
            argv += ["--shm-prefix", self.shm_prefix]
        if self._container:
            argv += ["--container", self._container]
        try:
            with open(self.log_file, "ab") as log_out:
                self._watchdog = subprocess.Popen(argv, stdin=read_end, stdout=log_out,
                                                  stderr=log_out, start_new_session=True)
        except OSError as exc:
            log.warning("no watchdog (%s): if this process is killed, tritonserver's stubs and "
                        "shared memory may be left behind until the next start", exc)
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None
        finally:
            os.close(read_end)

    def wait_ready(self, timeout: Optional[float] = None) -> "TritonServer":
        """Block until the server and every model in its repository are ready.

        Raises :class:`ServerStartError` (log tail, failing models) when the process exits
        first or ``timeout`` (default ``ready_timeout``) passes.
        """
        if self._process is None:
            raise ServerError("the server is not started: call start() first")
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self._start_error(f"tritonserver exited with code "
                                        f"{self._process.returncode} before it was ready")
            if self.models_ready():
                return self
            time.sleep(0.1)
        loading = loading_models(self.log_text())
        detail = f" (still loading: {', '.join(loading)})" if loading else ""
        raise self._start_error(f"tritonserver was not ready after {timeout or self.ready_timeout}"
                                f" s{detail}; raise ready_timeout (--ready-timeout) if the "
                                "models are slow to load")

    def _start_error(self, headline: str) -> ServerStartError:
        return start_error(headline, self.log_file, self.log_text(),
                           self.command if self.docker_image else ())

    def is_alive(self) -> bool:
        """Whether the process is running."""
        return self._process is not None and self._process.poll() is None

    @property
    def events(self) -> List[dict]:
        """What the supervisor saw and did, oldest first (see
        :attr:`towhee_rt.triton.supervisor.Supervisor.events`); empty when unsupervised."""
        return self._supervisor.events if self._supervisor else []

    @property
    def supervised(self) -> bool:
        """Whether a supervisor watches this server's stubs (host servers with ``supervise``)."""
        return self._supervisor is not None

    @property
    def given_up_models(self) -> Set[str]:
        """Models the supervisor left unloaded because they kept dying."""
        return set(self._supervisor.given_up) if self._supervisor else set()

    def stop(self, timeout: float = STOP_TIMEOUT_SECS) -> Optional[int]:
        """Stop gracefully (SIGTERM: tritonserver lets in-flight requests finish and unloads
        the models within its exit timeout), then SIGKILL the whole process group after
        ``timeout`` seconds; remove the server's shared-memory regions; return the exit code
        (``None`` if never started). Safe to call twice."""
        process = self._process
        if process is None or self._stopped:
            return process.returncode if process else None
        pinned = 0
        if self._supervisor is not None:
            self._supervisor.stop()
            pinned = self._supervisor.pinned_versions()
        if process.poll() is None:
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            process.send_signal(signal.SIGTERM)
            self._wait_stopped(timeout, pinned, log_offset)
        self._cleanup()
        return process.returncode

    def _wait_stopped(self, timeout: float, pinned: int, log_offset: int) -> None:
        """Wait for tritonserver to exit after SIGTERM; with ``pinned`` model versions that
        Triton never unloads, only until every other model is unloaded (it would otherwise
        spend its whole exit timeout waiting for them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._process.wait(0.2)
                return
            except subprocess.TimeoutExpired:
                pass
            if pinned and only_pinned_left(read_log(self.log_file, log_offset), pinned):
                log.info("tritonserver has unloaded every model but %d version(s) that cannot "
                         "unload (a request reached a dead stub); not waiting for them",
                         pinned)
                return
        log.warning("tritonserver did not stop within %.0f s; killing it", timeout)

    def kill(self) -> None:
        """SIGKILL tritonserver and its Python stubs (or the container) now."""
        if self._process is not None and not self._stopped:
            if self._supervisor is not None:
                self._supervisor.stop()
            self._cleanup()

    def _cleanup(self) -> None:
        """Kill what is left of the server, remove its regions, let the watchdog go."""
        procs.kill_group(self._process.pid)  # start_new_session: group id == pid
        self._process.wait()
        procs.kill_group(self._process.pid)  # stubs that outlived their server
        if self._container:  # killing `docker run` leaves its container running
            subprocess.run(["docker", "rm", "-f", self._container], capture_output=True,
                           timeout=60, check=False)
            self._container = None
        if self.shm_prefix:
            procs.remove_regions(self.shm_prefix)
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)  # the watchdog finds nothing left and exits
            self._watchdog_pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None
        self._stopped = True

    def __enter__(self) -> "TritonServer":
        if not self.is_alive():
            self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    @property
    def admin(self) -> TritonAdmin:
        """This server's HTTP endpoint with its keys (repository index, load, unload,
        readiness; :class:`~towhee_rt.triton.admin.TritonAdmin`), shared with its supervisor."""
        if self._admin is None:
            raise ServerError("the server is not started: call start() first")
        return self._admin

    def model_states(self) -> Dict[str, str]:
        """Model name -> Triton state (``'READY'``, ``'UNAVAILABLE'``, ``'LOADING'``...) from
        the repository index; empty when the server does not answer."""
        return self.admin.index() or {}

    def models_ready(self) -> bool:
        """Whether the server is ready, every model in its repository answers ready, and the
        supervisor has no dead stub, recovery under way or model given up."""
        if not self.is_alive():
            return False
        if self._supervisor is not None and not self._supervisor.healthy():
            return False
        if not self.admin.ready():
            return False
        names = list(self.model_states())
        return bool(names) and all(
            self.admin.request("GET", f"/v2/models/{name}/ready", admin=False)[0] == 200
            for name in names)

    def log_text(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    def __repr__(self) -> str:
        where = self.grpc_url if self.ports else "not started"
        return f"TritonServer({str(self.model_repository)!r}, {where})"


def serve(model_repository: Optional[PathLike], *, grpc_port: Optional[int] = DEFAULT_GRPC_PORT,
          http_port: Optional[int] = DEFAULT_HTTP_PORT,
          metrics_port: Optional[int] = DEFAULT_METRICS_PORT, api_key: Optional[str] = None,
          **kwargs) -> TritonServer:
    """Start tritonserver on ``model_repository`` and return it once every model is ready.

    Ports default to Triton's 8001/8000/8002; ``None`` or 0 picks a free port. Other keyword
    arguments go to :class:`TritonServer` (``host``, ``api_key``, ``admin_key``,
    ``tritonserver``, ``docker_image``, ``log_file``, ``ready_timeout``, ``extra_args``,
    ``env``...). With ``api_key``, inference requires that key
    (``dc(...).remote(..., api_key=...)``, ``Client(..., api_key=...)``); the admin APIs always
    require an admin key (random per start unless ``admin_key`` is given). The result is a
    context manager that stops the server; otherwise call ``server.stop()``. While it runs, a
    model whose stub dies or hangs is reloaded (``supervise=False`` turns that off;
    ``server.events`` lists what happened, ``on_event=`` is told as it happens). Raises
    :class:`~towhee_rt.errors.ServerError` (with the log tail and failing models) on failure,
    after stopping what was started. Example::

        with serve("repo/", grpc_port=0, http_port=0, metrics_port=0) as server:
            towhee.dc(["photo.jpg"]).remote(url=server.grpc_url, protocol="grpc")
    """
    server = TritonServer(model_repository, grpc_port=grpc_port, http_port=http_port,
                          metrics_port=metrics_port, api_key=api_key, **kwargs)
    server.start()
    try:
        return server.wait_ready()
    except BaseException:
        server.stop()
        raise
