"""Pick the best meter for a replica: nvml (GPUs it owns) > rapl > estimate, or what the config forces."""

from __future__ import annotations

import logging
import socket

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import Meter, MeterError, NullMeter
from serve_app.energy.estimate import EstimateMeter

log = logging.getLogger(__name__)


def _estimate(cfg: EnergyConfig, node: str) -> Meter:
    return EstimateMeter(cfg.cpu_tdp_w, cfg.cpu_cores, cfg.dram_w_per_gb, cfg.include_children, node=node)


def make_meter(cfg: EnergyConfig, gpu_ids: list[str] | None = None, node: str | None = None) -> Meter:
    """Build the replica's meter. A forced meter that cannot work raises `MeterError`; ``auto``
    falls back in order and logs why."""
    node = node or socket.gethostname()
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
