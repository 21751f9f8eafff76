"""Pick the best meter for a replica: nvml (GPUs it owns) > rapl > estimate, or what the config forces.

Multi-node: when the replica runs processes on other Ray nodes (given as ``remote``, or registered by
its classifier through ``energy.agents.register_remote_processes``), ``make_meter`` wraps the local
meter in an ``agents.MultiNodeMeter`` that adds those nodes' counters (read by per-node agents, which
build theirs with :func:`make_node_meter`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from serve_app.config_common import EnergyConfig
from serve_app.energy.agents import RemoteProcesses, registered_remote_processes
from serve_app.energy.base import Meter, MeterError, NullMeter
from serve_app.energy.estimate import EstimateMeter

log = logging.getLogger(__name__)


def _estimate(cfg: EnergyConfig, node: str) -> Meter:
    return EstimateMeter(cfg.cpu_tdp_w, cfg.cpu_cores, cfg.dram_w_per_gb, cfg.include_children, node=node)


def make_meter(
    cfg: EnergyConfig,
    gpu_ids: list[str] | None = None,
    node: str | None = None,
    remote: Iterable[RemoteProcesses] | None = None,
) -> Meter:
    """Build the replica's meter. A forced meter that cannot work raises `MeterError`; ``auto``
    falls back in order and logs why. ``remote``: the replica's processes on other nodes (default:
    those registered in this process); with any, the result is a ``MultiNodeMeter``."""
    from serve_app.topology.nodes import current_node_name

    node = node or current_node_name()
    local = _make_local_meter(cfg, gpu_ids, node)
    remotes = list(remote) if remote is not None else registered_remote_processes()
    if not remotes or cfg.meter == "off":
        return local
    from serve_app.energy.agents import MultiNodeMeter
    from serve_app.topology.nodes import alive_nodes, current_node_id

    node_id = current_node_id()
    local_node = alive_nodes().get(node_id, node) if node_id else node
    group = f"{local_node}-{os.getpid()}-{id(local):x}"
    return MultiNodeMeter(local, local_node, remotes, cfg, group)


def make_node_meter(cfg: EnergyConfig, pids: Iterable[int], gpu_ids: Iterable[str], node: str) -> Meter:
    """An energy agent's meter for one replica's processes on its node: NVML for ``gpu_ids``, else RAPL
    (the whole package), else the estimate over ``pids`` and their children (same fallback rules)."""
    if cfg.meter in ("auto", "nvml", "rapl"):
        meter = _make_local_meter(cfg, list(gpu_ids), node)  # a forced meter that cannot work raises
        if not isinstance(meter, EstimateMeter):
            return meter
        meter.close()
    from serve_app.energy.agents import ProcessSetMeter

    return ProcessSetMeter(cfg, pids, node)


def _make_local_meter(cfg: EnergyConfig, gpu_ids: list[str] | None, node: str) -> Meter:
    if cfg.meter == "off":
        return NullMeter(node)
    if cfg.meter in ("auto", "nvml") and gpu_ids:
        try:
            from serve_app.energy.nvml import NvmlMeter, nvml_available

            if nvml_available():
                return NvmlMeter(gpu_ids, power_fallback=cfg.nvml_power_fallback)
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
            from serve_app.energy.rapl import RaplMeter, rapl_available

            if rapl_available(cfg.rapl_root):
                return RaplMeter(cfg.rapl_root)
            reason = f"no readable RAPL zone under {cfg.rapl_root}"
        except (ImportError, MeterError) as exc:
            reason = str(exc)
        if cfg.meter == "rapl":
            raise MeterError(f"meter 'rapl' forced but unusable: {reason}")
    return _estimate(cfg, node)
