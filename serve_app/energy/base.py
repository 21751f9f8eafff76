"""The meter seam: cumulative energy counters per domain, each reading naming its source.

Layering (after Zeus): meters only read raw cumulative counters and convert them to joules.
They know nothing of windows, requests or Prometheus; `ledger.py` turns readings into
per-request energy and `serve_app.metrics` exports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Source = Literal["nvml", "nvml-power", "rapl", "estimate", "unavailable", "off"]
"""Where a figure comes from.

- ``nvml``: the GPU's total-energy counter (mJ, Volta and newer).
- ``nvml-power``: GPU power readings integrated over time (GPUs without the counter).
- ``rapl``: Intel/AMD RAPL package and DRAM counters from ``/sys/class/powercap``.
- ``estimate``: no sensor; CPU time x per-core power plus resident memory x W/GB. Never a measurement.
- ``unavailable``: the meter failed; no figure is given (never 0 J presented as measured).
- ``off``: metering disabled by configuration; no figure is given.
"""

Domain = Literal["gpu", "cpu", "dram"]
MEASURED_SOURCES: frozenset[str] = frozenset({"nvml", "nvml-power", "rapl"})


class MeterError(RuntimeError):
    """A counter could not be read (file vanished, permission revoked, NVML gone)."""


@dataclass(frozen=True)
class Reading:
    """One sample of a meter. Units: joules (cumulative, per domain), seconds (monotonic clock).

    ``energy_j`` maps a counter key (``"gpu:0"``, ``"cpu:package-0"``, ``"dram:package-0"``)
    to its cumulative joules since an arbitrary origin. Keys start with their domain.
    """

    t_s: float
    energy_j: dict[str, float]
    source: Source
    reset_keys: frozenset[str] = frozenset()
    """Counters the meter knows restarted since its previous reading (a driver reload)."""
    adjusted_j: float = 0.0
    """What the meter moved its values by on top of its extrapolation, cumulative, summed over counters
    (J): a node account share releasing an undershoot or settling an overshoot (``share.py``). Between
    two readings it is energy shown in that window that the window did not draw itself (or drew and
    was not shown); 0 for a meter that shows its counters as they are."""

    @staticmethod
    def domain_of(key: str) -> Domain:
        return key.split(":", 1)[0]  # type: ignore[return-value]


@dataclass(frozen=True)
class MeterInfo:
    """What a meter measures, for `/v1/models`, `/v1/energy` and every tag.

    ``resolution_j``: the smallest change a counter can show (J).
    ``update_period_s``: how often the underlying counter refreshes (s), as documented or observed.
    ``lag_s``: how old a value can be when read, beyond that (s): a remote node's counters held from
    its last poll. A window whose ends waited for fresh values (``ReplicaEnergy.settle``) does not
    carry it; one whose ends did not (``remote_counters_late``) does.
    ``edge_error_j``: for a meter that extrapolates between its counter's updates (a node account
    share), how far its extrapolation can drift from the exact value within one update: the largest
    miss of its extrapolation over one update at its recent updates (J, summed over counters); None
    for a meter that shows its counters as they are (the energy that can shift across a window's
    edge is then bounded by the update period). What such a meter moves on top of its extrapolation
    is counted in its readings (``Reading.adjusted_j``), not here. ``missed_j``: the same meter's
    misses summed since it started (J); over a replay run their increase bounds the drift of all the
    run's windows together (``replay.window``); None for a meter that shows its counters as they are.
    ``max_power_w``: per counter key, the most its device can draw (W), where the device says
    (RAPL's power-limit constraints, NVML's highest settable limit, the estimate's TDP and all its
    memory): no share of the counter moves faster (``share.py``). A key not named has only its
    domain's generic bound (``counters.MAX_POWER_W``).
    """

    source: Source
    devices: tuple[str, ...]
    resolution_j: float
    update_period_s: float
    node: str = ""
    lag_s: float = 0.0
    edge_error_j: float | None = None
    missed_j: float | None = None
    max_power_w: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Meter(Protocol):
    """Reads cumulative energy counters. Units: J, s. Must be cheap (called per request)."""

    @property
    def info(self) -> MeterInfo: ...

    def read(self) -> Reading:
        """Return the current cumulative counters; raise `MeterError` if they cannot be read."""
        ...

    def close(self) -> None: ...


def now_s() -> float:
    return time.monotonic()


class NullMeter:
    """The meter of ``EnergyConfig(meter="off")``: no counters at all (the ledger sees no energy)."""

    def __init__(self, node: str = "") -> None:
        self._info = MeterInfo(
            source="off",
            devices=(),
            resolution_j=0.0,
            update_period_s=0.0,
            node=node,
            notes="metering disabled",
        )

    @property
    def info(self) -> MeterInfo:
        return self._info

    def read(self) -> Reading:
        return Reading(now_s(), {}, "off")

    def close(self) -> None:
        pass


class BrokenMeter:
    """Stands in for a meter that could not be built (a forced ``rapl`` without readable counters):
    every read fails, so tags say ``unavailable`` and the replica keeps classifying."""

    def __init__(self, reason: str, node: str = "") -> None:
        self.reason = reason
        self._info = MeterInfo(
            source="unavailable", devices=(), resolution_j=0.0, update_period_s=0.0, node=node, notes=reason
        )

    @property
    def info(self) -> MeterInfo:
        return self._info

    def read(self) -> Reading:
        raise MeterError(self.reason)

    def close(self) -> None:
        pass
