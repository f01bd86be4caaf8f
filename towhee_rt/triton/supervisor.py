"""Keep a tritonserver's Python-backend models serving, and leave nothing behind when it stops.

In Triton 2.51 a Python-backend stub (one process per model instance, a child of tritonserver)
that dies is never restarted, and the server and the model keep reporting ready while every
request routed to that instance fails with "Stub process '<instance>' is not healthy". The
:class:`Supervisor` watches tritonserver's children in ``/proc`` (a stub's command line names
its ``model.py``, its shared-memory region and its instance), notices a stub that has exited
(a zombie: tritonserver does not reap it) or that is frozen (no thread of it has run for
:data:`HANG_SECS`: stopped, frozen by a cgroup, stuck in the kernel; its health thread, which
the backend expects to check in every 300 ms, is not running, so the backend fails requests
with "is not healthy" too), and reloads its model through the model-repository API
(tritonserver runs with ``--model-control-mode=explicit``):

* every instance of the model dead: unload it first, so that Triton's readiness
  (``--strict-readiness=true``) says not ready until it is back, then load it;
* some instances still serving: load it in place; Triton keeps the old version serving until
  the new one is ready, so only requests that reach the dead instance fail meanwhile.

A model that dies more than :data:`MAX_DEATHS` times within :data:`DEATH_WINDOW_SECS` is
unloaded and left so (reported as ``gave_up``). Everything it does is logged and recorded as
an event (a dict, see :meth:`Supervisor.events`).

Triton 2.51 never finishes unloading a model version once a request has reached one of its
dead stubs (it stays UNLOADING, its dead stub a zombie): the new version serves, but the old
one stays pinned. Its healthy instances, which no longer get requests, are killed
:data:`RETIRE_GRACE_SECS` after they were replaced (their memory would stay taken otherwise),
and :meth:`Supervisor.pinned_versions` tells a graceful stop not to wait for them.

Shared memory: the Python backend names each stub's region with the prefix given by
``--backend-config=python,shm-region-prefix-name=...``; towhee_rt gives each server
:func:`shm_prefix` (``towhee_rt_<owner pid>_<n>_``), removes a server's regions when it stops
(:func:`remove_regions`) and, at the next start, those whose owner has died
(:func:`remove_stale_regions`).

Stdlib only and standalone on purpose: this file also runs as a script, in two roles::

    python3 supervisor.py run -- tritonserver FLAGS...          # the container entrypoint
    python3 supervisor.py watchdog --group PGID --shm-prefix P   # started by TritonServer

``run`` starts tritonserver, supervises it, forwards SIGTERM/SIGINT, reaps orphans (as PID 1
or a subreaper) and cleans up when it exits. ``watchdog`` waits for its standard input (a pipe
whose other end only the launching process holds) to close; if the launcher dies without
stopping its server (SIGKILL), it kills what is left of the server's process group and removes
the server's shared-memory regions.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

log = logging.getLogger("towhee_rt")

STUB_NAME = "triton_python_backend_stub"
SHM_DIR = "/dev/shm"
#: The tritonserver flag that names the Python backend's shared-memory regions.
SHM_PREFIX_FLAG = "--backend-config=python,shm-region-prefix-name="
#: Seconds between two looks at tritonserver's children.
POLL_SECS = 0.25
#: A stub none of whose threads has run this long is hung (its health thread wakes every
#: 300 ms; the backend gives up on it after 1 s without).
HANG_SECS = 2.0
#: A model that dies more often than this within DEATH_WINDOW_SECS is left unloaded.
MAX_DEATHS = 3
DEATH_WINDOW_SECS = 60.0
#: How long to wait for a model to leave READY after it is unloaded.
UNLOAD_WAIT_SECS = 10.0
#: What a watchdog waits for the processes it killed to be gone before removing their regions.
KILL_WAIT_SECS = 5.0
#: The model-config parameter whose new value makes Triton load a model afresh.
RELOAD_PARAMETER = "towhee_rt_reload"
#: A replaced instance still running this long after its model was reloaded belongs to a
#: version Triton never unloads; no request reaches it any more, so it is killed.
RETIRE_GRACE_SECS = 30.0

_PREFIX_RE = re.compile(r"^towhee_rt_(\d+)_(\d+)_")
_LIVE_MODELS = re.compile(r"Found (\d+) live models")
_ALL_STOPPED = "All models are stopped, unloading models"
_prefix_counter = iter(range(1 << 30))
_prefix_lock = threading.Lock()


# ------------------------------------------------------------------------------ /proc
@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` used here."""
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    exit_code: Optional[int]  # waitpid-style status; set for zombies (Linux >= 3.5)


def proc_stat(pid: int) -> Optional[ProcStat]:
    """``/proc/<pid>/stat`` parsed, or ``None`` when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    fields = tail.split()
    try:
        exit_code = int(fields[49]) if len(fields) > 49 else None
        return ProcStat(pid, head.partition("(")[2], fields[0], int(fields[1]), int(fields[2]),
                        int(fields[3]), exit_code)
    except (IndexError, ValueError):
        return None


def all_processes() -> List[ProcStat]:
    """Every process this machine (or container) shows in ``/proc``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                found.append(stat)
    return found


def cmdline(pid: int) -> List[str]:
    """The argv of ``pid`` (empty for a zombie or a process that is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts; another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def activity(pid: int) -> Optional[int]:
    """Context switches so far, summed over the threads of ``pid`` (``None`` once it is
    gone): unchanged for a while means none of its threads has run."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith((b"voluntary_ctxt_switches", b"nonvoluntary_ctxt")):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def describe_exit(stat: Optional[ProcStat]) -> str:
    """'killed by SIGKILL' / 'exited with code 3' for a zombie; 'exited' when unknown."""
    if stat is None or stat.exit_code is None:
        return "exited"
    if stat.exit_code & 0x7F:
        number = stat.exit_code & 0x7F
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    return f"exited with code {(stat.exit_code >> 8) & 0xFF}"


# ------------------------------------------------------------------------------ stubs
@dataclass(frozen=True)
class Stub:
    """One Python-backend stub: a model instance's process."""
    pid: int
    model: str
    instance: str
    region: str


def parse_stub(pid: int, argv: Sequence[str]) -> Optional[Stub]:
    """The :class:`Stub` described by a stub's argv, or ``None`` for another program.

    Triton 2.51 starts it as ``stub <repo>/<model>/<version>/model.py <shm region>
    <shm size> <growth> <parent pid> <backend dir> <ipc handle> <instance> <runtime dir>``;
    the instance is ``<model>_<group>_<index>``.
    """
    if len(argv) < 3 or os.path.basename(argv[0]) != STUB_NAME:
        return None
    model = os.path.basename(os.path.dirname(os.path.dirname(argv[1])))
    pattern = re.compile(re.escape(model) + r"_\d+_\d+$")
    instance = next((arg for arg in argv[3:] if pattern.match(arg)), argv[-2])
    return Stub(pid, model, instance, argv[2])


def server_children(server_pid: int) -> Dict[int, ProcStat]:
    """tritonserver's child processes (zombies included), by pid."""
    return {stat.pid: stat for stat in all_processes() if stat.ppid == server_pid}


# ------------------------------------------------------------------------ shared memory
def shm_prefix(owner_pid: Optional[int] = None, number: Optional[int] = None) -> str:
    """``towhee_rt_<owner pid>_<n>_``: the region prefix of one server (``n`` counts the
    servers this process starts). The owner pid lets a later start tell leftovers of a dead
    process from the regions of a live one."""
    if number is None:
        with _prefix_lock:
            number = next(_prefix_counter)
    return f"towhee_rt_{os.getpid() if owner_pid is None else owner_pid}_{number}_"


def shm_prefix_flag(prefix: str) -> str:
    """The tritonserver flag that makes the Python backend name its regions ``prefix...``."""
    return SHM_PREFIX_FLAG + prefix


def _unlink(names: Iterable[str]) -> Tuple[int, int]:
    count = size = 0
    for name in names:
        path = os.path.join(SHM_DIR, name)
        try:
            nbytes = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            continue
        count, size = count + 1, size + nbytes
    return count, size


def regions(prefix: str) -> List[str]:
    """The names in ``/dev/shm`` that start with ``prefix``."""
    try:
        return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))
    except OSError:
        return []


def remove_regions(prefix: str) -> Tuple[int, int]:
    """Unlink every ``/dev/shm`` region named ``prefix...``; return (count, bytes)."""
    if not prefix:
        raise ValueError("an empty prefix would match every region")
    return _unlink(regions(prefix))


def remove_stale_regions() -> Tuple[int, int]:
    """Unlink the towhee_rt regions whose owner process is gone and that no running process
    names on its command line (an orphaned stub still using one); return (count, bytes)."""
    try:
        names = [name for name in os.listdir(SHM_DIR) if _PREFIX_RE.match(name)]
    except OSError:
        return 0, 0
    stale = [name for name in names if not pid_alive(int(_PREFIX_RE.match(name).group(1)))]
    if not stale:
        return 0, 0
    in_use = {arg for stat in all_processes() for arg in cmdline(stat.pid)}
    return _unlink(name for name in stale if name not in in_use)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


# ------------------------------------------------------------------------ process group
def group_members(pgid: int) -> List[ProcStat]:
    """The live processes of the session and process group ``pgid`` (a server started with
    ``start_new_session``: both ids are its pid), zombies left out."""
    return [stat for stat in all_processes()
            if stat.pgrp == pgid and stat.session == pgid and stat.state not in "ZX"]


def kill_group(pgid: int, timeout: float = KILL_WAIT_SECS) -> int:
    """SIGKILL every live member of ``pgid`` and wait up to ``timeout`` s until they are
    gone; return how many were killed."""
    members = group_members(pgid)
    for stat in members:
        try:
            os.kill(stat.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while members and group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(members)


# --------------------------------------------------------------------------- admin API
class TritonAdmin:
    """The few HTTP calls the supervisor makes: repository index, load, unload, readiness.

    ``http_url`` is ``'host:port'``; ``headers`` carry the admin key (the model-repository
    API is restricted to it) and, when inference needs one, the API key (so is a model's
    config).
    """

    def __init__(self, http_url: str, headers: Optional[Mapping[str, str]] = None):
        self.http_url = http_url
        self.headers = dict(headers or {})

    def request(self, method: str, path: str, timeout: float = 2.0, admin: bool = True,
                body: Optional[dict] = None) -> Tuple[int, bytes]:
        """(HTTP status, body); status 0 when the server does not answer."""
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data,
                                         method=method, headers=self.headers if admin else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def index(self) -> Optional[Dict[str, str]]:
        """Model name -> state (``READY``, ``UNAVAILABLE``, ``LOADING``, ``UNLOADING``) of
        every model in the repository; ``None`` when the server does not answer."""
        status, body = self.request("POST", "/v2/repository/index")
        if status != 200:
            return None
        return {entry["name"]: entry.get("state", "UNKNOWN") for entry in json.loads(body)}

    def load(self, model: str, timeout: float) -> Tuple[bool, str]:
        """Load ``model`` from the repository; (success, Triton's error message). A model
        that is loaded already and unchanged on disk is left as it is, dead stubs included."""
        status, body = self.request("POST", f"/v2/repository/models/{model}/load", timeout)
        return status == 200, _error_text(status, body)

    def reload(self, model: str, timeout: float) -> Tuple[bool, str]:
        """Load a new copy of the loaded ``model`` (new instances) while the current one keeps
        serving until it is ready. A plain load of an unchanged model does nothing, and a
        config that differs only in its instances reuses the unchanged ones, so this loads
        the running config with a parameter ``towhee_rt_reload`` (ignored by the models) set
        to a new value."""
        status, body = self.request("GET", f"/v2/models/{model}/config")
        if status != 200:
            return False, f"cannot read its config: {_error_text(status, body)}"
        config = json.loads(body)
        config.setdefault("parameters", {})[RELOAD_PARAMETER] = {
            "string_value": f"{time.time():.6f}"}
        status, body = self.request("POST", f"/v2/repository/models/{model}/load", timeout,
                                    body={"parameters": {"config": json.dumps(config)}})
        return status == 200, _error_text(status, body)

    def unload(self, model: str) -> Tuple[bool, str]:
        """Start unloading ``model`` (Triton finishes it in the background)."""
        status, body = self.request("POST", f"/v2/repository/models/{model}/unload")
        return status == 200, _error_text(status, body)

    def ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 (open to everyone, no key)."""
        return self.request("GET", "/v2/health/ready", admin=False)[0] == 200


def _error_text(status: int, body: bytes) -> str:
    if status == 200:
        return ""
    if status == 0:
        return "the server did not answer"
    try:
        return str(json.loads(body).get("error", body.decode(errors="replace")))
    except ValueError:
        return body.decode(errors="replace") or f"HTTP {status}"


# --------------------------------------------------------------------------- supervisor
class Supervisor:
    """A thread that keeps the models of tritonserver ``server_pid`` serving.

    ``admin`` reaches the server's HTTP endpoint with the admin key. ``shm_prefix``: the
    server's region prefix (its regions are removed if the server exits). ``on_event`` is
    called with each event dict, from the supervisor's thread. ``load_timeout``: seconds one
    model may take to load. Example::

        sup = Supervisor(server.pid, TritonAdmin(server.http_url, headers)).start()
        ...
        sup.stop()
        print(sup.events)   # [{'event': 'stub_died', 'model': 'echo', ...}, ...]
    """

    def __init__(self, server_pid: int, admin: TritonAdmin, *, shm_prefix: str = "",
                 on_event: Optional[Callable[[dict], None]] = None,
                 load_timeout: float = 120.0, poll_secs: float = POLL_SECS,
                 hang_secs: float = HANG_SECS, max_deaths: int = MAX_DEATHS,
                 death_window_secs: float = DEATH_WINDOW_SECS):
        self.server_pid = server_pid
        self.admin = admin
        self.shm_prefix = shm_prefix
        self.on_event = on_event
        self.load_timeout = load_timeout
        self.poll_secs = poll_secs
        self.hang_secs = hang_secs
        self.max_deaths = max_deaths
        self.death_window_secs = death_window_secs
        #: Models left unloaded because they kept dying.
        self.given_up: Set[str] = set()
        #: Whether tritonserver has exited (the supervisor then stops).
        self.server_exited = False
        self._stubs: Dict[int, Stub] = {}
        self._retiring: Dict[int, Stub] = {}  # exits expected: their models are reloading
        self._retired_at: Dict[int, float] = {}
        self._dead: Set[int] = set()  # retiring stubs that died (their zombies show pinning)
        self._activity: Dict[int, int] = {}
        self._quiet_since: Dict[int, float] = {}
        self._deaths: Dict[str, List[float]] = collections.defaultdict(list)
        self._pending: Dict[str, List[Tuple[Stub, str]]] = {}
        self._retry_at: Dict[str, float] = {}
        self._busy: Optional[str] = None
        self._events: List[dict] = []
        self._lock = threading.Lock()  # events
        self._track_lock = threading.Lock()  # _stubs and _retiring
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.monotonic()

    # ----------------------------------------------------------------- public
    def start(self) -> "Supervisor":
        """Start watching in a daemon thread; returns self."""
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="towhee_rt-supervisor",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching (waits up to ``timeout`` s for a recovery step to return)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def events(self) -> List[dict]:
        """What happened, oldest first: dicts with ``event`` (``stub_died``, ``stub_hung``,
        ``model_unloaded``, ``recovered``, ``recovery_failed``, ``gave_up``,
        ``server_exited``), ``t`` (seconds since :meth:`start`), ``time`` (epoch seconds) and
        the details (``model``, ``instance``, ``pid``, ``cause``, ``action``, ``seconds``...)."""
        with self._lock:
            return [dict(event) for event in self._events]

    def pinned_versions(self) -> int:
        """How many replaced model versions Triton is still holding on to: dead stubs whose
        zombies it has not reaped (it does when a version finishes unloading)."""
        count = 0
        for pid in list(self._dead):
            stat = proc_stat(pid)
            count += bool(stat and stat.state == "Z" and stat.ppid == self.server_pid)
        return count

    def healthy(self) -> bool:
        """False while a recovery is under way or due, when a model was given up, when the
        server has exited, or when a stub is dead right now. Looks afresh, so readiness is
        honest before the next poll, and registers the stubs it sees: once this has said
        True, the death of any stub then running is noticed."""
        if self._busy or self._pending or self.given_up or self.server_exited:
            return False
        children = server_children(self.server_pid)
        self._discover(children)
        for pid in list(self._stubs):
            stat = children.get(pid)
            if stat is None or stat.state in "ZX":
                return False
        return True

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.check():
                    return
            except Exception:  # never let one bad look end the supervision
                log.exception("supervisor: unexpected error; still watching")
            self._stop.wait(self.poll_secs)

    def check(self) -> bool:
        """One look at the server's stubs, and the recoveries it calls for; False once the
        server has exited. The thread calls this every :data:`POLL_SECS`."""
        server = proc_stat(self.server_pid)
        if server is None or server.state in "ZX":
            self._on_server_exit(server)
            return False
        now = time.monotonic()
        children = server_children(self.server_pid)
        self._discover(children)
        faults = self._faults(children, now)
        self._check_retiring(children, now)
        if faults:
            self._note_faults(faults)
        for model in sorted(self._pending):
            if self._stop.is_set():
                break
            if now >= self._retry_at.get(model, 0.0):
                self._recover(model)
        return True

    def _discover(self, children: Dict[int, ProcStat]) -> None:
        """Start tracking the running stubs among ``children`` (also called from other threads
        through :meth:`healthy`; the lock keeps a retired stub from being tracked again)."""
        for pid, stat in children.items():
            if stat.state not in "ZX" and pid not in self._stubs and pid not in self._retiring:
                stub = parse_stub(pid, cmdline(pid))
                with self._track_lock:
                    if stub is not None and pid not in self._retiring:
                        self._stubs.setdefault(pid, stub)

    def _retire(self, stub: Stub, dead: bool = False) -> None:
        self._activity.pop(stub.pid, None)
        self._quiet_since.pop(stub.pid, None)
        with self._track_lock:
            self._retired_at[stub.pid] = time.monotonic()
            if dead:
                self._dead.add(stub.pid)
            self._retiring[stub.pid] = stub
            self._stubs.pop(stub.pid, None)

    def _check_retiring(self, children: Dict[int, ProcStat], now: float) -> None:
        """Forget replaced stubs once reaped (removing their regions if Triton left them);
        kill those still running long after their model was reloaded (a pinned version)."""
        for pid, stub in list(self._retiring.items()):
            stat = children.get(pid)
            if stat is None:
                _unlink([stub.region])
                del self._retiring[pid]
                self._retired_at.pop(pid, None)
                self._dead.discard(pid)
            elif (stat.state not in "ZX" and pid not in self._dead and not self._busy
                  and now - self._retired_at.get(pid, now) > RETIRE_GRACE_SECS):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self._dead.add(pid)
                log.info("model %s: killed instance %s (pid %d) of a replaced version that "
                         "Triton does not unload (a request reached its dead stub); no "
                         "request reaches it any more", stub.model, stub.instance, pid)

    def _faults(self, children: Dict[int, ProcStat], now: float) -> List[Tuple[Stub, str, str]]:
        """(stub, event, cause) for each known stub that is dead or hung."""
        faults = []
        for pid, stub in list(self._stubs.items()):
            stat = children.get(pid)
            if stat is None or stat.state in "ZX":
                faults.append((stub, "stub_died", describe_exit(stat)))
            elif (quiet := self._quiet_for(pid, now)) >= self.hang_secs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                faults.append((stub, "stub_hung", f"frozen for {quiet:.1f} s (none of its "
                                                  f"threads ran; state {stat.state}); killed"))
        return faults  # _note_faults retires each of them

    def _quiet_for(self, pid: int, now: float) -> float:
        """Seconds since a thread of ``pid`` last ran, as far as the polls can tell."""
        count = activity(pid)
        if count is None or count != self._activity.get(pid):
            self._activity[pid] = count
            self._quiet_since.pop(pid, None)
            return 0.0
        return now - self._quiet_since.setdefault(pid, now)

    def _note_faults(self, faults: List[Tuple[Stub, str, str]]) -> None:
        states = self.admin.index()
        for stub, kind, cause in faults:
            # A stub of a model someone is unloading, or of a server going down, exits on
            # purpose; only a stub of a READY model is a fault.
            if states is None or states.get(stub.model) != "READY":
                self._retire(stub)
                continue
            self._emit(kind, f"model {stub.model}: stub {stub.instance} (pid {stub.pid}) "
                             f"{cause}", logging.WARNING, model=stub.model,
                       instance=stub.instance, pid=stub.pid, cause=cause)
            self._retire(stub, dead=True)
            if stub.model not in self.given_up:
                self._pending.setdefault(stub.model, []).append((stub, cause))

    def _recover(self, model: str) -> None:
        """Reload ``model`` (or give up on it); emits what happened."""
        faults = self._pending[model]
        now = time.monotonic()
        deaths = [t for t in self._deaths[model] if now - t < self.death_window_secs] + [now]
        self._deaths[model] = deaths
        if len(deaths) > self.max_deaths:
            self._give_up(model, len(deaths))
            return
        self._busy = model
        try:
            self._reload(model, faults, now)
        finally:
            self._busy = None

    def _reload(self, model: str, faults: List[Tuple[Stub, str]], started: float) -> None:
        alive = []
        for stub in [stub for stub in self._stubs.values() if stub.model == model]:
            stat = proc_stat(stub.pid)  # afresh: several may have died at once
            if stat and stat.state not in "ZXT" and stat.ppid == self.server_pid:
                alive.append(stub)  # exits once the model is reloaded: expected
                self._retire(stub)
                continue
            cause = describe_exit(stat)
            if stat and stat.state == "T":  # stopped: hung like its sibling, most likely
                os.kill(stub.pid, signal.SIGKILL)
                cause = "stopped; killed"
            self._emit("stub_died", f"model {model}: stub {stub.instance} (pid {stub.pid}) "
                                    f"{cause}", logging.WARNING, model=model,
                       instance=stub.instance, pid=stub.pid, cause=cause)
            self._retire(stub, dead=True)
            faults.append((stub, cause))
        instances = sorted({stub.instance for stub, _ in faults})
        if alive:
            action = f"loaded again in place ({len(alive)} healthy instance(s) kept serving)"
        else:
            action = "unloaded and loaded again"
            self._unload(model)
        log.warning("model %s: %s %s; loading it again", model, ", ".join(instances),
                    "dead" if len(instances) > 1 else "is dead")
        if alive:
            ok, error = self.admin.reload(model, self.load_timeout)
        else:
            ok, error = self.admin.load(model, self.load_timeout)
        if ok:
            ok, error = self._load_dependents()
        seconds = round(time.monotonic() - started, 3)
        if not ok:
            self._retry_at[model] = time.monotonic() + 1.0
            self._emit("recovery_failed", f"model {model}: reload failed after {seconds} s "
                                          f"({error}); trying again", logging.ERROR,
                       model=model, error=error, seconds=seconds)
            return
        del self._pending[model]
        self._retry_at.pop(model, None)
        for stub in alive:  # replaced just now: the grace period starts here
            self._retired_at[stub.pid] = time.monotonic()
        self._discover(server_children(self.server_pid))  # the new stubs, before they can die
        causes = "; ".join(f"{stub.instance} {cause}" for stub, cause in faults)
        self._emit("recovered", f"model {model} is ready again after {seconds} s ({action}; "
                                f"{causes})", logging.WARNING, model=model,
                   instances=instances, action=action, seconds=seconds)

    def _unload(self, model: str) -> None:
        """Unload ``model`` and wait until Triton no longer calls it (or its ensembles) ready."""
        ok, error = self.admin.unload(model)
        if not ok:
            log.warning("model %s: unload failed (%s); loading it again anyway", model, error)
            return
        deadline = time.monotonic() + UNLOAD_WAIT_SECS
        while time.monotonic() < deadline and not self._stop.is_set():
            states = self.admin.index()
            if states is None or states.get(model) != "READY":
                break
            time.sleep(0.02)
        self._emit("model_unloaded", f"model {model}: unloaded while it is reloaded "
                                     "(the server reports not ready)", logging.INFO,
                   model=model)

    def _load_dependents(self) -> Tuple[bool, str]:
        """Load models left unavailable by an unload (ensembles), except those given up."""
        states = self.admin.index() or {}
        for name, state in sorted(states.items()):
            if state != "READY" and name not in self.given_up:
                ok, error = self.admin.load(name, self.load_timeout)
                if not ok:
                    return False, f"{name}: {error}"
        return True, ""

    def _give_up(self, model: str, deaths: int) -> None:
        self._pending.pop(model, None)
        self.given_up.add(model)
        for stub in list(self._stubs.values()):
            if stub.model == model:
                self._retire(stub)
        ok, error = self.admin.unload(model)
        left = "left unloaded" if ok else f"could not be unloaded ({error})"
        self._emit("gave_up", f"model {model} died {deaths} times within "
                              f"{self.death_window_secs:.0f} s; {left}, so the server reports "
                              "not ready. Fix the model, then load it again (POST "
                              f"/v2/repository/models/{model}/load with the admin key) or "
                              "restart the server", logging.ERROR, model=model, deaths=deaths,
                   window_secs=self.death_window_secs)

    def _on_server_exit(self, stat: Optional[ProcStat]) -> None:
        self.server_exited = True
        killed = kill_group(self.server_pid)
        count, nbytes = remove_regions(self.shm_prefix) if self.shm_prefix else (0, 0)
        cause = describe_exit(stat)
        self._emit("server_exited", f"tritonserver (pid {self.server_pid}) {cause}; killed "
                                    f"{killed} leftover process(es), removed {count} shared-"
                                    f"memory region(s) ({_mib(nbytes)})", logging.INFO,
                   pid=self.server_pid, cause=cause, killed=killed, regions=count)

    def _emit(self, kind: str, message: str, level: int, **details) -> None:
        now = time.monotonic()
        event = {"event": kind, "t": round(now - self._started, 3),
                 "time": time.time(), **details, "message": message}
        with self._lock:
            self._events.append(event)
        log.log(level, "%s", message)
        if self.on_event is not None:
            try:
                self.on_event(dict(event))
            except Exception:
                log.exception("supervisor: the on_event callback failed")


def only_pinned_left(log_text: str, pinned: int) -> bool:
    """Whether the log of a stopping tritonserver (from its SIGTERM on) says that in-flight
    requests are done and at most ``pinned`` models are still live (it logs the count every
    second): what is left are versions it will never unload, so waiting longer is pointless."""
    if not pinned or _ALL_STOPPED not in log_text:
        return False
    counts = _LIVE_MODELS.findall(log_text.split(_ALL_STOPPED, 1)[1])
    return bool(counts) and int(counts[-1]) <= pinned


# --------------------------------------------------------------------------- watchdog
def watchdog_main(group: int, prefix: Optional[str] = None,
                  container: Optional[str] = None) -> int:
    """Wait until standard input closes, then kill what is left of process group ``group``
    (and ``docker rm -f`` ``container``) and remove the regions named ``prefix...``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe ends the wait
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    killed = kill_group(group)
    if container:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60,
                       check=False)
    count, nbytes = remove_regions(prefix) if prefix else (0, 0)
    if killed or count:
        print(f"towhee_rt watchdog: the process that started tritonserver (pid {group}) is "
              f"gone; killed {killed} leftover process(es), removed {count} shared-memory "
              f"region(s) ({_mib(nbytes)})", file=sys.stderr, flush=True)
    return 0


# -------------------------------------------------------------------------- run (image)
def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def admin_endpoint(argv: Sequence[str]) -> Tuple[str, Dict[str, str]]:
    """(``'127.0.0.1:<http port>'``, headers) of a tritonserver argv: the keys its
    ``--http-restricted-api`` flags require for the model-repository and model-config APIs."""
    port = _flag_value(argv, "--http-port") or "8000"
    address = _flag_value(argv, "--http-address") or "0.0.0.0"
    host = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    headers: Dict[str, str] = {}
    for i, arg in enumerate(argv):
        setting = (arg.split("=", 1)[1] if arg.startswith("--http-restricted-api=")
                   else argv[i + 1] if arg == "--http-restricted-api" and i + 1 < len(argv)
                   else None)
        if setting and ":" in setting:
            apis, _, header = setting.partition(":")
            if {"model-repository", "model-config"} & set(apis.split(",")) and "=" in header:
                name, value = header.split("=", 1)
                headers[name] = value
    return f"{host}:{port}", headers


def _set_subreaper() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass


class _ServerOutput(threading.Thread):
    """Copies tritonserver's output to ours; once it is stopping with ``pinned`` versions,
    kills it as soon as only those are left (see :func:`only_pinned_left`)."""

    def __init__(self, server: subprocess.Popen):
        super().__init__(name="towhee_rt-server-output", daemon=True)
        self.server = server
        self.pinned = 0
        self.cut_short = False
        self._since_stop: Optional[List[str]] = None
        self.start()

    def stopping(self, pinned: int) -> None:
        """tritonserver is being asked to stop; ``pinned`` versions will never unload."""
        if self._since_stop is None:
            self.pinned, self._since_stop = pinned, []

    def run(self) -> None:
        out = sys.stdout.buffer
        for line in iter(self.server.stdout.readline, b""):
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):  # our stdout is gone: keep draining its pipe
                pass
            since = self._since_stop
            if since is None or not self.pinned or self.cut_short:
                continue
            since.append(line.decode(errors="replace"))
            if only_pinned_left("".join(since), self.pinned):
                log.info("tritonserver has unloaded every model but %d version(s) that cannot "
                         "unload (a request reached a dead stub); not waiting for them",
                         self.pinned)
                self.cut_short = True
                try:
                    os.kill(self.server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def run_main(argv: Sequence[str], poll_secs: float = POLL_SECS) -> int:
    """Run the tritonserver command ``argv`` under supervision until it exits; its exit code
    (1 when a model was given up). SIGTERM/SIGINT go to tritonserver; a second SIGINT kills
    it. Orphans are reaped (as PID 1, or as a subreaper)."""
    if not argv:
        print("towhee_rt supervisor: no tritonserver command given (run -- tritonserver ...)",
              file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s towhee_rt supervisor %(levelname)s: %(message)s")
    _set_subreaper()
    count, nbytes = remove_stale_regions()
    if count:
        log.info("removed %d stale shared-memory region(s) (%s) of earlier runs", count,
                 _mib(nbytes))
    argv = list(argv)
    prefix = None
    for arg in argv:
        if arg.startswith(SHM_PREFIX_FLAG):
            prefix = arg[len(SHM_PREFIX_FLAG):]
    if prefix is None:
        prefix = shm_prefix(number=0)
        argv.append(shm_prefix_flag(prefix))
    http_url, headers = admin_endpoint(argv)
    try:  # its output passes through us, so that a stop can see what it waits for
        server = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
    except OSError as exc:
        log.error("cannot start %s: %s", argv[0], exc)
        return 127
    output = _ServerOutput(server)
    state = {"signals": 0, "gave_up": False}
    supervisor: Optional[Supervisor] = None

    def terminate(signum: int) -> None:
        output.stopping(supervisor.pinned_versions() if supervisor else 0)
        try:
            os.kill(server.pid, signum)
        except ProcessLookupError:
            pass

    def forward(signum, frame):
        state["signals"] += 1
        terminate(signal.SIGKILL if state["signals"] > 1 and signum == signal.SIGINT
                  else signum)

    def on_event(event):
        if event["event"] == "gave_up" and not state["gave_up"]:
            state["gave_up"] = True
            log.error("stopping tritonserver: model %s cannot be kept serving", event["model"])
            terminate(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    supervisor = Supervisor(server.pid, TritonAdmin(http_url, headers), shm_prefix=prefix,
                            on_event=on_event, poll_secs=poll_secs).start()
    # Popen.wait() would race the reaping of orphans below, so reap everything here.
    code = None
    while code is None:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            code = 1
            break
        if pid == server.pid:
            code = os.waitstatus_to_exitcode(status)
    server.returncode = code
    output.join(5)
    if output.cut_short:
        code = 0  # stopped as asked; only versions Triton never unloads were left
    supervisor.stop()
    killed = kill_group(server.pid)
    removed, nbytes = remove_regions(prefix)
    log.info("tritonserver exited (code %s); killed %d leftover process(es), removed %d "
             "shared-memory region(s) (%s)", code, killed, removed, _mib(nbytes))
    if state["gave_up"]:
        return 1
    return code if code >= 0 else 128 - code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``run -- tritonserver ...`` or ``watchdog --group PGID [--shm-prefix P]``."""
    parser = argparse.ArgumentParser(prog="towhee_rt_supervisor", description=__doc__.split(
        "\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run tritonserver under supervision")
    run.add_argument("server_argv", nargs=argparse.REMAINDER,
                     help="-- then the tritonserver command")
    watch = commands.add_parser("watchdog", help="clean up after a launcher that died")
    watch.add_argument("--group", type=int, required=True)
    watch.add_argument("--shm-prefix")
    watch.add_argument("--container")
    args = parser.parse_args(argv)
    if args.command == "watchdog":
        return watchdog_main(args.group, args.shm_prefix, args.container)
    server_argv = list(args.server_argv)
    if server_argv[:1] == ["--"]:
        server_argv = server_argv[1:]
    return run_main(server_argv)


if __name__ == "__main__":
    sys.exit(main())
