"""The ``estimate`` meter: no sensor, so energy is inferred from what the process uses.

    cpu_j  = CPU seconds of the replica (and, by default, its child processes) x per-core power
    dram_j = integral of resident memory (GB) x ``dram_w_per_gb`` over time (memory re-read every
             ``RSS_REFRESH_S``; a read in between integrates the last value)

Per-core power = ``cpu_tdp_w / cpu_cores`` (defaults: 65 W spread over the machine's logical cores;
0.375 W/GB for memory, CodeCarbon's figure). This attributes a share of a nominal CPU power to the
process by its CPU time: it is an *estimate*, labelled ``estimate`` everywhere, never a measurement.
Resolution: the replica's own CPU time comes from ``time.process_time()`` (nanosecond clock); child
processes' from ``/proc`` (one scheduler tick, ``1 / SC_CLK_TCK`` s = 10 ms on Linux). The meter's
resolution is the tick's energy once it has children, the clock's otherwise.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import psutil

from serve_app.energy.base import MeterError, MeterInfo, Reading, now_s

CHILD_REFRESH_S = 1.0
"""How often the list of child processes is re-scanned (s)."""
RSS_REFRESH_S = 0.05
"""Resident memory is re-read at most this often (s): it changes slowly, and the DRAM figure integrates
it over time, so a per-request ``/proc`` read would add cost and no information."""
_BYTES_PER_GB = 1e9


class EstimateMeter:
    """CPU-time and resident-memory estimate for one process tree. Units: J, s, W."""

    def __init__(
        self,
        cpu_tdp_w: float = 65.0,
        cpu_cores: int | None = None,
        dram_w_per_gb: float = 0.375,
        include_children: bool = True,
        pid: int | None = None,
        node: str = "",
    ) -> None:
        self._cores = cpu_cores or os.cpu_count() or 1
        self.per_core_w = cpu_tdp_w / self._cores
        self.dram_w_per_gb = dram_w_per_gb
        self._include_children = include_children
        self._proc = psutil.Process(pid)
        self._own = pid is None or pid == os.getpid()
        self._lock = threading.Lock()
        self._children: dict[int, psutil.Process] = {}
        self._child_cpu_s: dict[int, float] = {}  # last seen CPU seconds per child (kept after it exits)
        self._children_refreshed_s = float("-inf")
        self._rss_bytes = 0.0
        self._rss_now = 0.0
        self._rss_read_s = float("-inf")
        self._children_read_s = float("-inf")
        self._dram_j = 0.0
        self._last_s: float | None = None
        self._tick_s = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self._node = node
        self._max_power_w = estimate_max_power_w(cpu_tdp_w, self.per_core_w, dram_w_per_gb)
        self._notes = (
            f"CPU time x {self.per_core_w:.2f} W/core (TDP {cpu_tdp_w:g} W / {self._cores} cores)"
            f" + resident memory x {dram_w_per_gb:g} W/GB; children {'included' if include_children else 'excluded'}"
        )

    @property
    def info(self) -> MeterInfo:
        coarse = not self._own or bool(self._children)
        step_s = self._tick_s if coarse else 1e-6
        return MeterInfo(
            source="estimate",
            devices=(f"cpu-process:{self._proc.pid}",),
            resolution_j=step_s * self.per_core_w,
            update_period_s=step_s,
            node=self._node,
            max_power_w=dict(self._max_power_w),
            notes=self._notes,
        )

    def _refresh_children(self, t_s: float) -> None:
        if t_s - self._children_refreshed_s < CHILD_REFRESH_S:
            return
        self._children_refreshed_s = t_s
        try:
            current = {c.pid: c for c in self._proc.children(recursive=True)}
        except psutil.Error:
            return
        for pid, proc in current.items():
            self._children.setdefault(pid, proc)
        for pid in list(self._children):
            if pid not in current:
                del self._children[pid]  # its last CPU seconds stay in _child_cpu_s

    def _cpu_and_rss(self, t_s: float) -> tuple[float, float]:
        """CPU seconds of the tree and its resident bytes. Own CPU time comes from the nanosecond
        clock on every read; ``/proc`` is read only where it can say something new: another process's
        CPU time, children's CPU time at most every half scheduler tick (their resolution is a tick),
        resident memory every ``RSS_REFRESH_S``."""
        read_rss = t_s - self._rss_read_s >= RSS_REFRESH_S
        try:
            cpu_s = time.process_time() if self._own else _cpu_s(self._proc)
            rss = float(self._proc.memory_info().rss) if read_rss else 0.0
        except psutil.Error as exc:
            raise MeterError(f"estimate: cannot read process {self._proc.pid}: {exc}") from exc
        if self._include_children:
            if t_s - self._children_read_s >= self._tick_s / 2:
                self._read_children(t_s)
            cpu_s += sum(self._child_cpu_s.values())
            if read_rss:
                rss += self._children_rss()
        if read_rss:
            self._rss_now, self._rss_read_s = rss, t_s
        return cpu_s, self._rss_now

    def _read_children(self, t_s: float) -> None:
        """Refresh the children's CPU seconds (an exited child keeps its last value)."""
        self._children_read_s = t_s
        self._refresh_children(t_s)
        for pid, child in list(self._children.items()):
            try:
                self._child_cpu_s[pid] = max(self._child_cpu_s.get(pid, 0.0), _cpu_s(child))
            except psutil.Error:
                self._children.pop(pid, None)

    def _children_rss(self) -> float:
        total = 0.0
        for child in list(self._children.values()):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def read(self) -> Reading:
        with self._lock:
            t_s = now_s()
            cpu_s, rss = self._cpu_and_rss(t_s)
            if self._last_s is not None:
                # trapezoid over the interval since the previous read
                self._dram_j += (
                    (self._rss_bytes + rss) / 2 / _BYTES_PER_GB * self.dram_w_per_gb * (t_s - self._last_s)
                )
            self._last_s, self._rss_bytes = t_s, rss
            return Reading(
                t_s, {"cpu:process": cpu_s * self.per_core_w, "dram:process": self._dram_j}, "estimate"
            )

    def close(self) -> None:
        self._children.clear()


def cpu_max_power_w(cpu_tdp_w: float, per_core_w: float) -> float:
    """The most the CPU estimate can show (W): every logical CPU busy, which is more than the TDP where
    ``cpu_cores`` names fewer cores than the machine has (``/proc`` counts them all)."""
    return max(cpu_tdp_w, per_core_w * (os.cpu_count() or 1))


def estimate_max_power_w(cpu_tdp_w: float, per_core_w: float, dram_w_per_gb: float) -> dict[str, float]:
    """The most the estimate's counters can show (W): every logical CPU of the machine busy (its TDP,
    or more where ``cpu_cores`` names fewer cores than the machine has: per-core power x its CPUs) and
    all of its memory resident. A process tree (or a set of them) runs on this machine, so it can show
    no more; and a step up to this is no less real for exceeding a generic package bound."""
    return {
        "cpu:process": cpu_max_power_w(cpu_tdp_w, per_core_w),
        "dram:process": psutil.virtual_memory().total / _BYTES_PER_GB * dram_w_per_gb,
    }


def _cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process (from ``/proc``: one scheduler tick of resolution)."""
    ct = proc.cpu_times()
    return float(ct.user + ct.system)
