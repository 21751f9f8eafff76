"""The node's own counters, each read once: RAPL packages and DRAM, every GPU's NVML counter, and where
no sensor exists a whole-node ``estimate``. Only the node account (``account.py``) reads these.

- RAPL: ``cpu:<package>`` and ``dram:<package>`` (``rapl.RaplMeter``: ``psys`` and the duplicate MMIO
  tree are skipped, so a package is never summed with a zone that contains it).
- NVML: ``gpu:<index>`` for every GPU of the node (``nvml.NvmlMeter``).
- ``estimate`` (no RAPL): ``cpu:node`` = busy CPU seconds of the whole node from ``/proc/stat``
  (user + nice + system + irq + softirq + steal; idle and iowait are not busy) x per-core power, and
  ``dram:node`` = memory in use (``MemTotal - MemAvailable`` from ``/proc/meminfo``) x W/GB,
  integrated over time (trapezoid between reads). Labelled ``estimate``: never a measurement.

Units: J (cumulative), s, W.
"""

from __future__ import annotations

import logging
import os
import threading

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import Meter, MeterError, MeterInfo, Reading, now_s
from serve_app.energy.estimate import cpu_max_power_w
from serve_app.energy.nvml import NvmlMeter, nvml_available
from serve_app.energy.rapl import RaplMeter, rapl_available

log = logging.getLogger(__name__)
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest is inside user)
_BYTES_PER_GB = 1e9


def node_busy_cpu_s(proc_root: str = "/proc") -> float:
    """Busy CPU seconds of the whole node since boot, summed over cores (``/proc/stat``). Units: s."""
    try:
        with open(f"{proc_root}/stat", encoding="ascii") as f:
            line = f.readline()
    except OSError as exc:
        raise MeterError(f"cannot read {proc_root}/stat: {exc}") from exc
    ticks = [int(x) for x in line.split()[1:]]
    return sum(ticks[i] for i in _BUSY_FIELDS if i < len(ticks)) * _TICK_S


def _meminfo_bytes(proc_root: str) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"{proc_root}/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError) as exc:
        raise MeterError(f"cannot read {proc_root}/meminfo: {exc}") from exc
    return values


def node_memory_used_bytes(proc_root: str = "/proc") -> float:
    """``MemTotal - MemAvailable`` from ``/proc/meminfo``. Units: bytes."""
    values = _meminfo_bytes(proc_root)
    return float(values.get("MemTotal", 0) - values.get("MemAvailable", 0))


def node_memory_total_bytes(proc_root: str = "/proc") -> float:
    """``MemTotal`` from ``/proc/meminfo``. Units: bytes."""
    return float(_meminfo_bytes(proc_root).get("MemTotal", 0))


class NodeEstimateMeter:
    """The whole node's CPU and memory estimate (see the module doc). Units: J, s, W."""

    def __init__(self, cpu_tdp_w: float, cpu_cores: int | None, dram_w_per_gb: float, node: str = "") -> None:
        self.cores = cpu_cores or os.cpu_count() or 1
        self.per_core_w = cpu_tdp_w / self.cores
        self.rate_prior_j_per_cpu_s = {"cpu:node": self.per_core_w}
        """What the account's extrapolation rate is before it has seen any CPU time (see
        ``NodeAccount.rate_j_per_cpu_s``): the ``cpu`` counter is busy CPU time x W/core, so W/core."""
        self.dram_w_per_gb = dram_w_per_gb
        self._lock = threading.Lock()
        self._dram_j = 0.0
        self._last: tuple[float, float] | None = None  # (t_s, bytes in use)
        self._info = MeterInfo(
            source="estimate",
            devices=("cpu:node", "dram:node"),
            resolution_j=_TICK_S * self.per_core_w,
            update_period_s=_TICK_S,
            node=node,
            # every logical CPU busy (/proc/stat counts them all, whatever ``cpu_cores`` says); all of
            # the memory in use
            max_power_w={
                "cpu:node": cpu_max_power_w(cpu_tdp_w, self.per_core_w),
                "dram:node": node_memory_total_bytes() / _BYTES_PER_GB * dram_w_per_gb,
            },
            notes=(
                f"node busy CPU time (/proc/stat) x {self.per_core_w:.2f} W/core (TDP {cpu_tdp_w:g} W / "
                f"{self.cores} cores) + memory in use (/proc/meminfo) x {dram_w_per_gb:g} W/GB"
            ),
        )

    @property
    def info(self) -> MeterInfo:
        return self._info

    def read(self) -> Reading:
        with self._lock:
            busy_s = node_busy_cpu_s()
            used = node_memory_used_bytes()
            t_s = now_s()
            if self._last is not None:
                t0, used0 = self._last
                self._dram_j += (used0 + used) / 2 / _BYTES_PER_GB * self.dram_w_per_gb * (t_s - t0)
            self._last = (t_s, used)
            return Reading(t_s, {"cpu:node": busy_s * self.per_core_w, "dram:node": self._dram_j}, "estimate")

    def close(self) -> None:
        pass


def make_node_counters(cfg: EnergyConfig, node: str, gpus: bool = True) -> list[Meter]:
    """The node's meters, each counter once: RAPL (or the node estimate where RAPL is unreadable, or
    ``cfg.meter == "estimate"``) and NVML for all GPUs when ``gpus`` and NVML works."""
    meters: list[Meter] = []
    if cfg.meter in ("auto", "rapl"):
        if rapl_available(cfg.rapl_root):
            meters.append(RaplMeter(cfg.rapl_root, node=node))
        elif cfg.meter == "rapl":
            raise MeterError(f"meter 'rapl' forced but no readable RAPL zone under {cfg.rapl_root}")
    if not meters:
        meters.append(NodeEstimateMeter(cfg.cpu_tdp_w, cfg.cpu_cores, cfg.dram_w_per_gb, node))
    if gpus and cfg.meter in ("auto", "nvml"):
        try:
            import importlib

            if nvml_available():  # every GPU of the node, whatever CUDA_VISIBLE_DEVICES the agent got
                nvml = importlib.import_module("pynvml")
                nvml.nvmlInit()
                count = int(nvml.nvmlDeviceGetCount())
                ids = [str(i) for i in range(count)]
                meters.append(NvmlMeter(ids, power_fallback=cfg.nvml_power_fallback, node=node))
        except Exception as exc:  # NVMLError and friends: the node keeps its CPU counters
            log.warning("node GPUs not metered: %s", exc)
    return meters
