"""The processes of one node, their CPU time and the group each belongs to (step 1 of the node account).

Read from ``/proc`` (``/proc/<pid>/stat``: parent PID, start time; ``/proc/<pid>/cmdline``: the process
title Ray sets) and the kernel's CPU clock of each process. No registration and no Ray dashboard are
needed.

Groups (:func:`group_of`):

- ``replica:<pid>``: a Serve replica (title ``ray::ServeReplica:<app>:<deployment>``)
  with every process below it (vLLM's engine core and workers, a pipeline's feature stage). Processes
  elsewhere that a replica *claims* (vLLM Ray workers in its placement group, see
  ``footprint.WorkerProcess``) join it too.
- ``router:<pid>``: a replica of the router deployment (``router``).
- ``proxy``: Serve's HTTP proxy (``ray::ProxyActor``).
- ``ray_system``: raylet, GCS, dashboard and runtime-env agents, log monitor, the Serve controller, the
  energy agents, idle and unknown Ray workers (``ray::IDLE``, ``ray::<ActorClass>``).
- ``other``: not a Ray process, nor below one (the test runner, the OS, other tenants).

A process without a title of its own takes the group of its nearest ancestor that has one.
Units: CPU time in seconds, from the kernel's per-process CPU clocks (`process_cpu_s`, nanoseconds):
``/proc/<pid>/stat`` counts 10 ms ticks, sampled, so two processes' tick counts over a second can be
off by a tick each, and a share extrapolated between account ticks by the precise clock would then
jump at the next tick by the difference.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ROUTER_DEPLOYMENTS = frozenset({"router"})
PROXY = "proxy"
RAY_SYSTEM = "ray_system"
OTHER = "other"
_RAY_SYSTEM_WORDS = (
    "raylet",
    "gcs_server",
    "dashboard/agent.py",
    "dashboard/dashboard.py",
    "log_monitor.py",
    "ray/autoscaler",
    "runtime_env/agent",
    "ray/_private/monitor.py",
    "default_worker.py",
)
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
_CPUCLOCK_SCHED = 2  # linux/posix-timers.h: a process clock of scheduler run time


@dataclass(frozen=True)
class Proc:
    """One process: parent, title, cumulative CPU time (user + system, s) and start time (s since boot)."""

    pid: int
    ppid: int
    title: str
    cpu_s: float
    start_s: float = 0.0


def read_proc(pid: int, root: str = "/proc", titles: TitleCache | None = None) -> Proc | None:
    """One process from ``/proc`` (None if it exited while being read). ``titles``: see `TitleCache`.
    Its CPU time comes from the kernel's clock of the process (`process_cpu_s`, ns) under the real
    ``/proc``; from its ``stat`` (clock ticks) under another root (a tree a test wrote)."""
    try:
        stat = _read(f"{root}/{pid}/stat").decode(errors="replace")
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        # fields[0] = state, [1] = ppid, [11] = utime, [12] = stime, [19] = starttime (man 5 proc,
        # minus pid and comm)
        start_s = int(fields[19]) * _TICK_S
        title = titles.get(pid, start_s, comm) if titles is not None else None
        if title is None:
            title = _read(f"{root}/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
            if titles is not None:
                titles.put(pid, start_s, comm, title)
    except OSError:
        return None
    cpu_s = (int(fields[11]) + int(fields[12])) * _TICK_S
    if root == "/proc":  # a live process: its kernel CPU clock (ns), not the 10 ms ticks of its stat
        cpu_s = process_cpu_s(pid) or cpu_s
    return Proc(pid, int(fields[1]), title, cpu_s, start_s)


def _read(path: str) -> bytes:
    """A small ``/proc`` file in one read (``os.read``: half the CPU of ``open().read()`` per file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


class TitleCache:
    """Process titles kept between scans, keyed by PID, start time (a reused PID is a new process) and
    ``comm`` (the executable's name in ``stat``, which ``exec`` changes: a process forked by the raylet
    holds the raylet's command line until it execs the worker, under the same PID and start time), so a
    scan reads one file per process instead of two. Ray workers' titles are read every scan: an idle
    worker (``ray::IDLE``) becomes a replica or an actor under the same PID."""

    def __init__(self) -> None:
        self._titles: dict[int, tuple[float, str, str]] = {}

    def get(self, pid: int, start_s: float, comm: str) -> str | None:
        hit = self._titles.get(pid)
        return hit[2] if hit is not None and hit[:2] == (start_s, comm) else None

    def put(self, pid: int, start_s: float, comm: str, title: str) -> None:
        if not _may_retitle(title):
            self._titles[pid] = (start_s, comm, title)

    def keep_only(self, pids: Iterable[int]) -> None:
        """Forget processes that are gone."""
        live = set(pids)
        self._titles = {pid: v for pid, v in self._titles.items() if pid in live}


def _may_retitle(title: str) -> bool:
    """A Ray worker (or a process that is about to become one) sets its title after it starts."""
    return title.startswith("ray::") or "default_worker.py" in title


def uptime_s(root: str = "/proc") -> float:
    """Seconds since boot (``/proc/uptime``), the clock of ``Proc.start_s``."""
    with open(f"{root}/uptime", encoding="ascii") as f:
        return float(f.read().split()[0])


def scan(root: str = "/proc", titles: TitleCache | None = None) -> dict[int, Proc]:
    """Every process on the node. Units: s. ``titles``: a cache kept between scans."""
    out: dict[int, Proc] = {}
    for name in os.listdir(root):
        if name.isdigit():
            p = read_proc(int(name), root, titles)
            if p is not None:
                out[p.pid] = p
    if titles is not None:
        titles.keep_only(out)
    return out


def deployment_of(title: str) -> str | None:
    """The Serve deployment a replica's title names (``ray::ServeReplica:<app>:<deployment>``; while a
    method runs Ray appends it: ``<deployment>.<method>``, which is stripped), else None."""
    if not title.startswith("ray::ServeReplica:"):
        return None
    _app, _, rest = title[len("ray::ServeReplica:") :].partition(":")
    deployment = rest.split(" ", 1)[0]
    base, dot, method = deployment.rpartition(".")
    return base if dot and method.isidentifier() else deployment


def own_group(title: str, pid: int, router_deployments: Iterable[str] = ROUTER_DEPLOYMENTS) -> str | None:
    """The group a process title names by itself, or None (it then takes its ancestor's). A replica's
    group is keyed by its PID only: its title changes while a method runs."""
    kind = _title_kind(title, frozenset(router_deployments))
    return f"{kind}:{pid}" if kind in ("replica", "router") else kind


@functools.lru_cache(maxsize=4096)
def _title_kind(title: str, routers: frozenset[str]) -> str | None:
    """What a title alone says (``replica``, ``router``, proxy, Ray system or None), kept per title: a
    scan asks it for every process every tick, and a node's titles are few."""
    deployment = deployment_of(title)
    if deployment is not None:
        return "router" if deployment in routers else "replica"
    if title.startswith("ray::ProxyActor"):
        return PROXY
    if title.startswith("ray::") or any(w in title for w in _RAY_SYSTEM_WORDS):
        return RAY_SYSTEM
    return None


def group_of(
    procs: Mapping[int, Proc],
    claims: Mapping[int, str] | None = None,
    router_deployments: Iterable[str] = ROUTER_DEPLOYMENTS,
) -> dict[int, str]:
    """Each process's group (see the module doc). ``claims``: PID -> group for processes a replica
    says are its own (they and their descendants join that group, whatever their title)."""
    routers = frozenset(router_deployments)
    claims = claims or {}
    own = {pid: claims.get(pid) or own_group(p.title, pid, routers) for pid, p in procs.items()}
    out: dict[int, str] = {}
    for pid in procs:
        chain: list[int] = []
        cur: int | None = pid
        group: str | None = None
        while cur is not None and cur in procs and cur not in chain:
            if cur in out:
                group = out[cur]
                break
            if own[cur] is not None:
                group = own[cur]
                break
            chain.append(cur)
            cur = procs[cur].ppid or None
        for c in chain:
            out[c] = group or OTHER
        out.setdefault(pid, group or OTHER)
    return out


def kind_of(group: str) -> str:
    """``replica``, ``router``, ``proxy``, ``ray_system`` or ``other``."""
    return group.split(":", 1)[0]


def process_cpu_s(pid: int) -> float | None:
    """A live process's CPU time (s, all its threads) from the kernel's CPU clock of that process:
    nanoseconds, where ``/proc/<pid>/stat`` counts 10 ms ticks (a 20 ms request would see 0, 1 or 2
    of them). None if the process is gone. Linux: the clock id is ``MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED)``, what ``clock_getcpuclockid(3)`` returns.

    Exact for threads that are off a CPU; a thread of another process that is running now has its
    time since the last scheduler tick (1/CONFIG_HZ: 4 ms on this VM, where the clock of a spinning
    process read from another steps by 4 ms) or since it started running added only at that tick or
    when it stops (``thread_group_cputime``). So a window of a few ms can miss work still running
    at its end; it shows in the next window, never lost."""
    try:
        return time.clock_gettime(((~pid) << 3) | _CPUCLOCK_SCHED)
    except OSError:
        return None
