"""Pick the best meter for a replica: nvml (its GPUs) > rapl > estimate, or what the config forces.

Work beyond the replica's own process tree comes in as a plan (``energy.footprint.plan_meter``):
GPUs and processes on the replica's node join the local meter; other nodes' processes and GPUs make
``footprint.meter_for_plan`` wrap the local meter in an ``agents.MultiNodeMeter`` that adds those
nodes' counters (read by per-node agents, which build theirs with :func:`make_node_meter`). This
module imports neither ``agents`` nor ``topology``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import Meter, MeterError, NullMeter
from serve_app.energy.estimate import EstimateMeter
from serve_app.energy.nvml import NvmlMeter, nvml_available
from serve_app.energy.procset import ProcessSetMeter
from serve_app.energy.rapl import RaplMeter, rapl_available

log = logging.getLogger(__name__)


def _estimate(cfg: EnergyConfig, node: str) -> Meter:
    return EstimateMeter(cfg.cpu_tdp_w, cfg.cpu_cores, cfg.dram_w_per_gb, cfg.include_children, node=node)


def make_meter(
    cfg: EnergyConfig,
    gpu_ids: list[str] | None = None,
    node: str = "",
    local_pids: Iterable[int] = (),
) -> Meter:
    """Build the replica's meter on its node. A forced meter that cannot work raises `MeterError`;
    ``auto`` falls back in order and logs why. ``gpu_ids``: the GPUs its work uses on this node;
    ``local_pids``: processes on this node outside its process tree that the CPU estimate must add."""
    extra = list(local_pids)
    return _make_local_meter(cfg, gpu_ids, node, [os.getpid(), *extra] if extra else None)


def make_node_meter(cfg: EnergyConfig, pids: Iterable[int], gpu_ids: Iterable[str], node: str) -> Meter:
    """An energy agent's meter for one replica's processes on its node: NVML for ``gpu_ids``, else RAPL
    (the whole package), else the estimate over ``pids`` and their children (same fallback rules)."""
    return _make_local_meter(cfg, list(gpu_ids), node, list(pids))


def _make_local_meter(
    cfg: EnergyConfig, gpu_ids: list[str] | None, node: str, pids: list[int] | None = None
) -> Meter:
    """``pids``: the processes the estimate covers (default: this one, and children per the config)."""
    if cfg.meter == "off":
        return NullMeter(node)
    if cfg.meter in ("auto", "nvml") and gpu_ids:
        try:
            if nvml_available():
                return NvmlMeter(gpu_ids, power_fallback=cfg.nvml_power_fallback, node=node)
            reason = "NVML not available"
        except (ImportError, MeterError) as exc:
            reason = str(exc)
        if cfg.meter == "nvml":
            raise MeterError(f"meter 'nvml' forced but unusable: {reason}")
        log.warning("GPU replica without NVML (%s): falling back", reason)
    elif cfg.meter == "nvml":
        raise MeterError("meter 'nvml' forced but the replica owns no GPU")
    if cfg.meter in ("auto", "rapl"):
        try:
            if rapl_available(cfg.rapl_root):
                return RaplMeter(cfg.rapl_root, node=node)
            reason = f"no readable RAPL zone under {cfg.rapl_root}"
        except (ImportError, MeterError) as exc:
            reason = str(exc)
        if cfg.meter == "rapl":
            raise MeterError(f"meter 'rapl' forced but unusable: {reason}")
    if pids is not None:
        return ProcessSetMeter(cfg, pids, node)
    return _estimate(cfg, node)
