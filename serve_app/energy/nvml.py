"""NVIDIA GPU energy through NVML (``pynvml`` from the ``nvidia-ml-py`` package, imported lazily).

Per GPU, the best source the device offers:

- ``nvml``: ``nvmlDeviceGetTotalEnergyConsumption``, the cumulative energy counter (Units: mJ since
  the driver was loaded; Volta and newer). Converted to J; a driver reload resets it, which the ledger
  counts as a reset.
- ``nvml-power`` (only with ``power_fallback=True``, for GPUs where the counter is NotSupported):
  ``nvmlDeviceGetPowerUsage`` (Units: mW) integrated over time by the trapezoid rule between two
  ``read()`` calls. Labelled ``nvml-power``, never presented as the counter; its accuracy depends on
  how often ``read()`` is called (the sampler's period) and on the board's power averaging (about
  1 s on Ampere and newer).

A GPU that reports neither raises `MeterError`: never a silent 0 J. A reading's ``source`` is
``nvml-power`` as soon as one GPU is integrated from power.

GPU identity: the ids a replica gets (``ray.get_gpu_ids()`` or ``CUDA_VISIBLE_DEVICES``) are physical
indices or UUIDs (``GPU-...``). They are resolved to NVML devices by UUID (`resolve_gpus`, a pure
function); a bare index is an NVML index, i.e. PCI bus order, which matches CUDA's order when
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (Ray's assignment does not reorder). Counter keys are
``gpu:<NVML index>``; ``MeterInfo.devices`` holds ``gpu:<index>=<UUID>``.

Units: J (cumulative), s (monotonic clock), W; raw NVML values in mJ and mW.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.energy.base import MeterError, MeterInfo, Reading, now_s

NVML_RESOLUTION_J = 1e-3
"""Resolution (J): the energy counter counts mJ (power integration: mW x s, also ~1 mJ over 1 s)."""
NVML_UPDATE_PERIOD_S = 0.1
"""Nominal refresh period (s) of the energy counter and power reading; not yet measured on an H100
here (``tests/gpu/test_nvml_gpu.py`` prints the observed period where a GPU exists)."""

_MJ_PER_J = 1000.0
_MW_PER_W = 1000.0
GpuMode = Literal["counter", "power"]


@dataclass(frozen=True)
class GpuIdentity:
    """A physical GPU as NVML numbers it: ``index`` (PCI bus order) and ``uuid`` (``GPU-...``)."""

    index: int
    uuid: str


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Split a ``CUDA_VISIBLE_DEVICES`` value. None when unset (all GPUs visible), [] when empty."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def resolve_gpus(
    gpu_ids: Sequence[str | int] | None,
    physical: Sequence[GpuIdentity],
    visible_devices: Sequence[str] | None = None,
) -> list[GpuIdentity]:
    """Map a replica's GPU ids to physical GPUs, sorted by index, without duplicates.

    ``gpu_ids``: Ray's ``get_gpu_ids()`` (ints, or strings holding indices or UUIDs). When None,
    ``visible_devices`` (parsed ``CUDA_VISIBLE_DEVICES``) is used; when that is None too, every GPU.
    A UUID may be given by a unique prefix (as CUDA accepts). Raises ValueError for an unknown or
    ambiguous id and for MIG instances (their energy is the parent GPU's, which NVML reports whole).
    """
    if gpu_ids is None and visible_devices is None:
        return sorted(set(physical), key=lambda g: g.index)
    ids: Sequence[str | int] = gpu_ids if gpu_ids is not None else (visible_devices or [])
    by_index = {g.index: g for g in physical}
    chosen: dict[int, GpuIdentity] = {}
    for raw in ids:
        text = str(raw).strip()
        if text.startswith("MIG-"):
            raise ValueError(f"GPU id {text!r} is a MIG instance: per-instance energy is not metered")
        if text.startswith("GPU-"):
            exact = [g for g in physical if g.uuid == text]
            matches = exact or [g for g in physical if g.uuid.startswith(text)]
            if len(matches) != 1:
                what = "matches no GPU" if not matches else f"is ambiguous ({len(matches)} GPUs)"
                raise ValueError(f"GPU UUID {text!r} {what}")
            gpu = matches[0]
        else:
            try:
                index = int(text)
            except ValueError:
                raise ValueError(f"GPU id {text!r} is neither an index nor a GPU-... UUID") from None
            if index not in by_index:
                raise ValueError(f"GPU index {index} not found (NVML sees {sorted(by_index)})")
            gpu = by_index[index]
        chosen[gpu.index] = gpu
    return [chosen[i] for i in sorted(chosen)]


def _import_pynvml() -> Any:
    return importlib.import_module("pynvml")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@functools.lru_cache(maxsize=1)
def nvml_available() -> bool:
    """Whether NVML loads and sees at least one GPU. Cached; ``nvml_available.cache_clear()`` forgets.
    False (never an exception) when ``pynvml`` is missing, the library is absent or init fails."""
    try:
        nvml = _import_pynvml()
    except ImportError:
        return False
    try:
        nvml.nvmlInit()
    except (nvml.NVMLError, OSError):
        return False
    try:
        return int(nvml.nvmlDeviceGetCount()) > 0
    except nvml.NVMLError:
        return False
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


@dataclass
class _Gpu:
    """One metered GPU. ``energy_j``/``last_w``/``last_t_s`` hold the power-integration state."""

    key: str
    uuid: str
    handle: Any
    mode: GpuMode
    energy_j: float = 0.0
    last_w: float = 0.0
    last_t_s: float = 0.0


class NvmlMeter:
    """Cumulative GPU energy per device. Units: J (cumulative), s (monotonic), W.

    ``gpu_ids``: the replica's GPUs (see `resolve_gpus`); None reads ``CUDA_VISIBLE_DEVICES``.
    ``power_fallback``: integrate power on GPUs without the energy counter (else `MeterError`).
    ``force_power``: integrate power even where the counter exists (calibration and tests).
    ``nvml``: the ``pynvml`` module or a stand-in with its interface (tests fake the vendor library);
    ``clock``: monotonic seconds, injectable for the power integration.
    ``read()`` is thread-safe and all-or-nothing.
    """

    def __init__(
        self,
        gpu_ids: Sequence[str | int] | None = None,
        power_fallback: bool = True,
        *,
        force_power: bool = False,
        nvml: Any | None = None,
        clock: Callable[[], float] = now_s,
        node: str = "",
    ) -> None:
        if nvml is None:
            try:
                nvml = _import_pynvml()
            except ImportError as e:
                raise MeterError("NVML unavailable: install nvidia-ml-py (extra 'gpu')") from e
        self._nvml = nvml
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        try:
            nvml.nvmlInit()
        except (nvml.NVMLError, OSError) as e:
            raise MeterError(f"NVML init failed: {e}") from e
        try:
            self._gpus = self._open(gpu_ids, power_fallback, force_power)
        except BaseException:
            self.close()
            raise
        modes = {g.mode for g in self._gpus}
        self._source: Literal["nvml", "nvml-power"] = "nvml-power" if "power" in modes else "nvml"
        self._info = MeterInfo(
            source=self._source,
            devices=tuple(f"{g.key}={g.uuid}" for g in self._gpus),
            resolution_j=NVML_RESOLUTION_J,
            update_period_s=NVML_UPDATE_PERIOD_S,
            node=node or socket.gethostname(),
            notes=(
                "NVML total-energy counter (mJ)"
                if self._source == "nvml"
                else "NVML power (mW) integrated by trapezoid between reads on: "
                + ", ".join(g.key for g in self._gpus if g.mode == "power")
            )
            + "; update period 0.1 s nominal",
            extra={**{g.key: g.uuid for g in self._gpus}, **{f"mode:{g.key}": g.mode for g in self._gpus}},
            max_power_w={g.key: w for g in self._gpus if (w := self._max_power_w(g)) is not None},
        )

    def _open(
        self, gpu_ids: Sequence[str | int] | None, power_fallback: bool, force_power: bool
    ) -> list[_Gpu]:
        nvml = self._nvml
        try:
            physical = [
                GpuIdentity(i, _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))))
                for i in range(int(nvml.nvmlDeviceGetCount()))
            ]
        except nvml.NVMLError as e:
            raise MeterError(f"NVML could not list GPUs: {e}") from e
        visible = parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES")) if gpu_ids is None else None
        try:
            targets = resolve_gpus(gpu_ids, physical, visible)
        except ValueError as e:
            raise MeterError(f"cannot map GPU ids {gpu_ids!r} to NVML devices: {e}") from e
        if not targets:
            raise MeterError(f"no GPU to meter (gpu_ids={gpu_ids!r}, CUDA_VISIBLE_DEVICES={visible!r})")
        gpus: list[_Gpu] = []
        for target in targets:
            key = f"gpu:{target.index}"
            try:
                handle = nvml.nvmlDeviceGetHandleByUUID(target.uuid)
            except nvml.NVMLError as e:
                raise MeterError(f"NVML has no handle for {target.uuid}: {e}") from e
            mode = self._probe_mode(key, handle, power_fallback, force_power)
            gpu = _Gpu(key, target.uuid, handle, mode)
            if mode == "power":
                gpu.last_w = self._power_w(gpu)
                gpu.last_t_s = self._clock()
            gpus.append(gpu)
        return gpus

    def _probe_mode(self, key: str, handle: Any, power_fallback: bool, force_power: bool) -> GpuMode:
        nvml = self._nvml
        if not force_power:
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                return "counter"
            except nvml.NVMLError_NotSupported:
                if not power_fallback:
                    raise MeterError(f"{key} has no NVML energy counter and power_fallback is off") from None
            except nvml.NVMLError as e:
                raise MeterError(f"{key}: NVML energy counter failed: {e}") from e
        try:
            nvml.nvmlDeviceGetPowerUsage(handle)
        except nvml.NVMLError as e:
            raise MeterError(f"{key} reports neither an energy counter nor power: {e}") from e
        return "power"

    def _max_power_w(self, gpu: _Gpu) -> float | None:
        """The highest power limit the board allows (W): the driver holds its draw under the limit set,
        which is at most this. None where NVML does not say."""
        try:
            _min_mw, max_mw = self._nvml.nvmlDeviceGetPowerManagementLimitConstraints(gpu.handle)
        except self._nvml.NVMLError:
            return None
        return float(max_mw) / _MW_PER_W if max_mw else None

    def _power_w(self, gpu: _Gpu) -> float:
        try:
            return float(self._nvml.nvmlDeviceGetPowerUsage(gpu.handle)) / _MW_PER_W
        except self._nvml.NVMLError as e:
            raise MeterError(f"{gpu.key} ({gpu.uuid}): NVML power read failed: {e}") from e

    @property
    def info(self) -> MeterInfo:
        return self._info

    def read(self) -> Reading:
        """Read every GPU. Units: J (cumulative), s. Raises `MeterError` (closed, GPU lost, ...)."""
        with self._lock:
            if self._closed:
                raise MeterError("NVML meter is closed")
            energy_j: dict[str, float] = {}
            updates: list[tuple[_Gpu, float, float, float]] = []  # gpu, energy_j, power_w, t_s
            for gpu in self._gpus:
                if gpu.mode == "counter":
                    try:
                        mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)
                    except self._nvml.NVMLError as e:
                        raise MeterError(f"{gpu.key} ({gpu.uuid}): NVML energy read failed: {e}") from e
                    energy_j[gpu.key] = float(mj) / _MJ_PER_J
                else:
                    power_w = self._power_w(gpu)
                    t_s = self._clock()
                    dt_s = max(t_s - gpu.last_t_s, 0.0)
                    e_j = gpu.energy_j + 0.5 * (gpu.last_w + power_w) * dt_s
                    updates.append((gpu, e_j, power_w, t_s))
                    energy_j[gpu.key] = e_j
            for gpu, e_j, power_w, t_s in updates:  # commit only after every GPU was read
                gpu.energy_j, gpu.last_w, gpu.last_t_s = e_j, power_w, t_s
            return Reading(t_s=self._clock(), energy_j=energy_j, source=self._source)

    def close(self) -> None:
        """Release NVML (once; later reads raise `MeterError`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()
