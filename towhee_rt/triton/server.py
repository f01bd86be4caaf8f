"""Start a tritonserver on a model repository, wait until it is ready, serve, stop it.

The server is, by precedence: ``docker_image`` (``docker run ... IMAGE tritonserver ...`` as in
Towhee's guide), ``tritonserver`` (that binary), else the one carried by ``nvidia-pytriton``
(:mod:`.embedded`); argv and environment: :mod:`.launch_plan`, flags: :mod:`.flags` (shared
with the generated Dockerfile). Endpoints bind ``host`` (default ``127.0.0.1``). The admin APIs
need an admin key, random per start unless given; inference needs ``api_key`` when one is
given. The process (:mod:`.process`) dies with the *thread* that started it (start servers from
a long-lived thread), runs in its own session and logs to a file that errors quote
(:mod:`.server_log`); it never writes bytecode into the repository.

A host server is supervised (:mod:`.supervisor`): a model whose Python stub dies or hangs is
reloaded, readiness is false meanwhile, and :attr:`TritonServer.events` says what happened.
Nothing is left behind: stubs, shared-memory regions (``towhee_rt_<pid>_<n>_...``) and a
temporary log after a clean stop are removed, by a watchdog process if ours is killed.
Example::

    with TritonServer("repo/") as server:   # free loopback ports
        print(server.grpc_url, server.model_states())

:func:`serve` starts one and returns it once every model is ready (``towhee_rt.serve``);
:meth:`TritonServer.serve_forever` serves in the foreground until Ctrl-C (:mod:`.lifetime`).
"""
from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set

from ..errors import ServerError
from .admin import TritonAdmin
from .commands import PathLike
from .flags import (DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT,
                    STOP_TIMEOUT_SECS, check_key, key_headers)
from .lifetime import ServeOutcome, serve_until_signalled
from .launch_plan import LaunchPlan, docker_plan, host_plan
from .ports import resolve_ports
from .process import ServerProcess, remove_regions_of_dead_processes, temporary_log_file
from .repository_check import (check_repository, pycache_dirs, remove_new_pycache,
                               single_pipeline)
from .server_log import ServerStartError, loading_models, start_error
from .supervisor import Supervisor


class TritonServer:
    """One tritonserver process on ``model_repository``: start, wait ready, query, stop.

    Ports left ``None`` (or 0) get free loopback ports; a port given explicitly must be free.
    ``extra_args`` are appended to the tritonserver flags, ``env`` overrides environment
    variables. ``log_file``: where the server's output goes; by default a temporary file that
    errors quote, removed by a clean :meth:`stop` unless ``keep_log`` (kept after a failure).
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
                 keep_log: bool = False, log_verbose: int = 0, ready_timeout: float = 120.0,
                 extra_args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
                 shm_size: str = "1g", api_key: Optional[str] = None,
                 admin_key: Optional[str] = None, supervise: bool = True,
                 on_event: Optional[Callable[[dict], None]] = None,
                 openai_port: Optional[int] = None, openai_model: Optional[str] = None):
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
        #: Whether :meth:`stop` leaves the log file (always for a ``log_file`` given).
        self.keep_log = keep_log or log_file is not None
        self._failed = False  # a failed start or a death: the log is kept whatever keep_log says
        self._process: Optional[ServerProcess] = None
        self.command: List[str] = []  # the argv of the last start()
        self._stopped = False
        self.supervise = supervise
        self.on_event = on_event
        #: The Python backend's region prefix of the last start() (host servers).
        self.shm_prefix: Optional[str] = None
        self._admin: Optional[TritonAdmin] = None
        self._supervisor: Optional[Supervisor] = None
        self._pycache_before: Set[Path] = set()
        #: The OpenAI-compatible gateway in front (``openai_port``; None: none).
        self._openai_port, self._openai_model = openai_port, openai_model
        self._gateway = None

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
    def has_gateway(self) -> bool:
        """Whether the OpenAI-compatible gateway is running in front of this server."""
        return self._gateway is not None

    @property
    def openai_url(self) -> str:
        """``'http://127.0.0.1:8080'``: the OpenAI-compatible gateway (``openai_port``);
        OpenAI clients take ``base_url=server.openai_url + '/v1'``."""
        if self._gateway is None:
            raise ServerError("no OpenAI gateway: pass openai_port= (0: a free port) and "
                              "start the server with start_ready()")
        return self._gateway.url

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
    def _plan(self) -> LaunchPlan:
        keys = dict(api_key=self.api_key, admin_key=self.admin_key)
        common = dict(host=self.host, ports=self.ports, keys=keys, log_verbose=self.log_verbose,
                      extra_args=self.extra_args, env=self.env)
        if self.docker_image:
            return docker_plan(self.docker_image, self.model_repository, shm_size=self.shm_size,
                               **common)
        return host_plan(self.model_repository, tritonserver=self.tritonserver, **common)

    def start(self) -> "TritonServer":
        """Launch the process (returns at once; see :meth:`wait_ready`, :meth:`start_ready`)."""
        if self.is_alive():
            raise ServerError(f"tritonserver is already running (pid {self.pid})")
        if self.model_repository is not None:
            check_repository(self.model_repository)
            self._pycache_before = pycache_dirs(self.model_repository)
        self.ports = resolve_ports(self.host, self._requested)
        self.admin_key = self._fixed_admin_key or secrets.token_urlsafe(32)
        self._admin = TritonAdmin(self.http_url, key_headers(
            "http", api_key=self.api_key, admin_key=self.admin_key))
        plan = self._plan()
        self.shm_prefix = plan.shm_prefix
        self.log_file = self.log_file or temporary_log_file()
        if self.shm_prefix:
            remove_regions_of_dead_processes()
        self.command = plan.argv
        self._stopped = self._failed = False
        try:
            self._process = ServerProcess(plan.argv, plan.env, self.log_file, plan.shm_prefix,
                                          plan.container)
        except BaseException:
            if not self.keep_log:  # nothing was logged: no file to point to
                self.log_file.unlink(missing_ok=True)
            raise
        if self.supervise and self.shm_prefix:
            self._supervisor = Supervisor(
                self._process.pid, self._admin, shm_prefix=self.shm_prefix,
                on_event=self.on_event, load_timeout=self.ready_timeout).start()
        return self

    def wait_ready(self, timeout: Optional[float] = None) -> "TritonServer":
        """Block until the server and every model in its repository are ready.

        Raises :class:`ServerStartError` (failing models and their reasons first, the log's
        path) when the process exits first or ``timeout`` (default ``ready_timeout``) passes.
        """
        if self._process is None:
            raise ServerError("the server is not started: call start() first")
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self._start_error(f"tritonserver exited with code "
                                        f"{self._process.returncode} before it was ready")
            if self.models_ready():
                return self
            time.sleep(0.1)
        loading = loading_models(self.log_text())
        detail = f" (still loading: {', '.join(loading)})" if loading else ""
        raise self._start_error(f"tritonserver was not ready after {timeout:g} s{detail}; "
                                "raise ready_timeout (--ready-timeout) if the models are slow "
                                "to load")

    def start_ready(self, timeout: Optional[float] = None) -> "TritonServer":
        """Start (unless running) and wait until every model is ready; on any failure (an
        interrupt included) stop what was started and re-raise. Returns the server."""
        try:
            if not self.is_alive():
                self.start()
            self.wait_ready(timeout)
            self._start_gateway()
            return self
        except BaseException as exc:
            # An interrupt is the user's choice, not a failure: its temporary log goes.
            self._failed = self._failed or not isinstance(exc, KeyboardInterrupt)
            self.stop()
            raise

    def serve_forever(self, on_ready: Optional[Callable[["TritonServer"], None]] = None,
                      on_stopping: Optional[Callable[[], None]] = None,
                      stop_requested: Optional[threading.Event] = None) -> ServeOutcome:
        """Start (unless running), wait ready, call ``on_ready(self)``, then serve until
        SIGINT/SIGTERM (main thread), ``stop_requested`` is set, tritonserver dies or the
        supervisor gives a model up; stop (calling ``on_stopping()`` before a requested stop)
        and return how it ended (:class:`~towhee_rt.triton.lifetime.ServeOutcome`). What
        ``towhee-rt serve`` does. Raises like :meth:`start_ready`."""
        return serve_until_signalled(self, on_ready, stop_requested, on_stopping)

    def _start_gateway(self) -> None:
        """Put the OpenAI-compatible gateway in front of the ready server, when asked."""
        if self._openai_port is None or self._gateway is not None:
            return
        from ..gateway import start_gateway

        model = self._openai_model or single_pipeline(self.model_repository)
        self._gateway = start_gateway(self.grpc_url, model_name=model, host=self.host,
                                      port=self._openai_port, api_key=self.api_key)

    def _start_error(self, headline: str) -> ServerStartError:
        self._failed = True
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
        ``timeout`` seconds; remove the server's shared-memory regions and, after a clean
        run, its temporary log; return the exit code (``None`` if never started). Safe to
        call twice."""
        process = self._process
        if process is None or self._stopped:
            return process.returncode if process else None
        if self._gateway is not None:  # first: no new request reaches a stopping server
            self._gateway.stop()
            self._gateway = None
        pinned = 0
        if self._supervisor is not None:
            self._supervisor.stop()
            pinned = self._supervisor.pinned_versions()
            self._failed = self._failed or bool(self._supervisor.given_up)
        self._failed = self._failed or process.poll() is not None  # it died on its own
        process.terminate(timeout, pinned)
        self._cleanup()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL tritonserver and its Python stubs (or the container) now."""
        if self._process is not None and not self._stopped:
            if self._gateway is not None:
                self._gateway.stop()
                self._gateway = None
            if self._supervisor is not None:
                self._supervisor.stop()
            self._cleanup()

    def _cleanup(self) -> None:
        self._process.cleanup()
        self._stopped = True
        if self.model_repository is not None and not self.docker_image:
            remove_new_pycache(self.model_repository, self._pycache_before)
        if not (self.keep_log or self._failed) and self.log_file is not None:
            self.log_file.unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        return self.start_ready()

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
    ``tritonserver``, ``docker_image``, ``log_file``, ``keep_log``, ``ready_timeout``,
    ``extra_args``, ``env``...). With ``api_key``, inference requires that key
    (``dc(...).remote(..., api_key=...)``, ``Client(..., api_key=...)``); the admin APIs always
    require an admin key (random per start unless ``admin_key`` is given). The result is a
    context manager that stops the server; otherwise call ``server.stop()``, or
    ``server.serve_forever()`` to serve in the foreground until Ctrl-C as ``towhee-rt serve``
    does. While it runs, a model whose stub dies or hangs is reloaded (``supervise=False``
    turns that off; ``server.events`` lists what happened, ``on_event=`` is told as it
    happens). Raises :class:`~towhee_rt.errors.ServerError` (failing models and their
    reasons first) on failure, after stopping what was started. Example::

        with serve("repo/", grpc_port=0, http_port=0, metrics_port=0) as server:
            towhee.dc(["photo.jpg"]).remote(url=server.grpc_url, protocol="grpc")
    """
    return TritonServer(model_repository, grpc_port=grpc_port, http_port=http_port,
                        metrics_port=metrics_port, api_key=api_key, **kwargs).start_ready()
