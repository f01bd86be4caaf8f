# SHIPPED: copied verbatim into the image's build context as towhee_rt_supervisor/procs.py
# (towhee_rt.shipped.SUPERVISOR). Standard library and its sibling modules only; never towhee_rt.
"""Processes and shared memory of a tritonserver, from ``/proc`` and ``/dev/shm``.

The Python backend starts one stub process per model instance, a child of tritonserver; a
stub's command line names its ``model.py``, its shared-memory region and its instance
(:func:`parse_stub`). The backend names each stub's region with the prefix given by
``--backend-config=python,shm-region-prefix-name=...``; towhee_rt gives each server
:func:`shm_prefix` (``towhee_rt_<owner pid>_<n>_``), removes a server's regions when it stops
(:func:`remove_regions`) and, at the next start, those whose owner has died
(:func:`remove_stale_regions`). A server runs in its own session and process group, which
:func:`kill_group` empties.

This is also the one reader of ``/proc`` for the tuner and the benchmarks: processes and their
CPU time (:class:`ProcStat`, :func:`all_processes`, :func:`process_tree`), the machine's busy
time (:func:`busy_cpu_ticks`, in :data:`CLOCK_TICKS`).

Standard library only: copied into images with the supervisor (:mod:`.supervisor_main`).
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

STUB_NAME = "triton_python_backend_stub"
SHM_DIR = "/dev/shm"
#: The tritonserver flag that names the Python backend's shared-memory regions.
SHM_PREFIX_FLAG = "--backend-config=python,shm-region-prefix-name="
#: What a watchdog waits for the processes it killed to be gone before removing their regions.
KILL_WAIT_SECS = 5.0

#: Clock ticks per second, the unit of /proc's CPU times.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

_PREFIX_RE = re.compile(r"^towhee_rt_(\d+)_(\d+)_")
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
    #: CPU time so far in :data:`CLOCK_TICKS`: user + system, plus its waited-for children's.
    cpu_ticks: int = 0


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
        cpu_ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ProcStat(pid, head.partition("(")[2], fields[0], int(fields[1]), int(fields[2]),
                        int(fields[3]), exit_code, cpu_ticks)
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


def process_tree(root: int, processes: Optional[Sequence[ProcStat]] = None
                 ) -> List[ProcStat]:
    """``root`` and its descendants (from ``processes``, default: :func:`all_processes`)."""
    table = {stat.pid: stat for stat in (all_processes() if processes is None else processes)}
    children: Dict[int, List[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, stack, seen = [], [root], set()
    while stack:
        pid = stack.pop()
        if pid in table and pid not in seen:
            seen.add(pid)
            found.append(table[pid])
            stack.extend(children.get(pid, []))
    return found


def busy_cpu_ticks() -> Optional[int]:
    """CPU ticks the whole machine spent busy since boot (all but idle and iowait), or None
    where ``/proc/stat`` cannot tell."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(values) - values[3] - values[4]


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


def unlink_regions(names: Iterable[str]) -> Tuple[int, int]:
    """Unlink these ``/dev/shm`` regions (those gone already are skipped); (count, bytes)."""
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
    return unlink_regions(regions(prefix))


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
    return unlink_regions(name for name in stale if name not in in_use)


def mib(nbytes: int) -> str:
    """``'12 MiB'``: a size for the log."""
    return f"{nbytes / 2**20:.0f} MiB"


# ------------------------------------------------------------------------ process group
def resident_kib(pid: int) -> Tuple[int, int]:
    """(anonymous, shared-memory) resident KiB of ``pid`` (0, 0 when it is gone)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                fields[name] = value
    except OSError:
        return 0, 0
    return (int(fields.get("RssAnon", "0 kB").split()[0]),
            int(fields.get("RssShmem", "0 kB").split()[0]))


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
