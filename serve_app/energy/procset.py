"""The estimate meter summed over a set of processes (a replica's workers outside its own tree)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import MeterError, MeterInfo, Reading, now_s
from serve_app.energy.estimate import EstimateMeter


class ProcessSetMeter:
    """The estimate meter summed over several PIDs (and their children). A PID that exits keeps its
    last cumulative value (the energy was spent). Units: J, s."""

    def __init__(self, cfg: EnergyConfig, pids: Iterable[int], node: str = "") -> None:
        self._meters = {
            pid: EstimateMeter(
                cfg.cpu_tdp_w, cfg.cpu_cores, cfg.dram_w_per_gb, cfg.include_children, pid=pid, node=node
            )
            for pid in pids
        }
        self._last: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()  # reads are serialised: `_last` and the time stamp move together
        self._node = node

    @property
    def info(self) -> MeterInfo:
        infos = [m.info for m in self._meters.values()]
        return MeterInfo(
            source="estimate",
            devices=tuple(d for i in infos for d in i.devices),
            resolution_j=max((i.resolution_j for i in infos), default=0.0),
            update_period_s=max((i.update_period_s for i in infos), default=0.01),
            node=self._node,
            max_power_w=infos[0].max_power_w if infos else {},
            notes=infos[0].notes if infos else "no processes",
        )

    def read(self) -> Reading:
        with self._lock:
            for pid, m in self._meters.items():
                with contextlib.suppress(MeterError):  # an exited PID keeps its last value
                    self._last[pid] = m.read().energy_j
            total: dict[str, float] = {}
            for values in self._last.values():
                for k, v in values.items():
                    total[k] = total.get(k, 0.0) + v
            return Reading(now_s(), total or {"cpu:process": 0.0, "dram:process": 0.0}, "estimate")

    def close(self) -> None:
        for m in self._meters.values():
            m.close()
