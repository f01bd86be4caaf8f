# SHIPPED: copied verbatim into the image's build context as towhee_rt_supervisor/supervisor.py
# (towhee_rt.shipped.SUPERVISOR). Standard library and its sibling modules only; never towhee_rt.
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

The stubs are found and the server's shared-memory regions removed with :mod:`.procs`; the
HTTP calls go through :class:`~.admin.TritonAdmin`. Standard library only: the image runs this
supervisor standalone around tritonserver, and the host launcher a watchdog
(:mod:`.supervisor_main`).
"""
from __future__ import annotations

import collections
import logging
import os
import re
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from .admin import TritonAdmin
from .procs import (ProcStat, Stub, activity, cmdline, describe_exit, kill_group, mib,
                    parse_stub, proc_stat, remove_regions, server_children, unlink_regions)

log = logging.getLogger("towhee_rt")

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
#: A replaced instance still running this long after its model was reloaded belongs to a
#: version Triton never unloads; no request reaches it any more, so it is killed.
RETIRE_GRACE_SECS = 30.0

_LIVE_MODELS = re.compile(r"Found (\d+) live models")
_ALL_STOPPED = "All models are stopped, unloading models"


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
                unlink_regions([stub.region])
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
                                    f"memory region(s) ({mib(nbytes)})", logging.INFO,
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

