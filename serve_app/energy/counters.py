"""Counters that cannot lie: how one step of a cumulative counter becomes an interval's energy.

Every consumer of cumulative counters (the per-replica ledger, the node account) turns two readings
of a counter into a delta with :func:`counter_step`, which applies three rules:

- **reset**: a backward step is a counter restart only when the new value is *near zero*, i.e. no
  more than the domain's physical bound for the interval (energy the device could have drawn since a
  restart inside the interval), or when the meter says so (``Reading.reset_keys``: a driver reload).
  The delta is then the new value.
- **reordered**: any other backward step (a read that overtook another, a stale remote value) gives
  delta 0 and keeps the previous value as the baseline, so the energy is counted once, when the
  counter passes its old value again. A remote NVML counter stepping back 50 J from 5,000,200 J is
  a reordering, never a 5 MJ "reset".
- **dropped**: a forward step above the physical bound (maximum power x (interval + slack) + the
  counter's resolution) is impossible for the hardware, and so is a restart the meter reports whose
  new value is above it. It is dropped (delta 0), counted and flagged and the new value becomes the
  baseline: it never reaches a tag.

Bounds per domain (:data:`MAX_POWER_W`) are per counter key (one GPU, one CPU package and its DRAM,
or one replica's process-set estimate), raised for a counter whose meter says it can show more
(``MeterInfo.max_power_w``, ``Limits.key_max_power_w``: the whole-node estimate at the configured TDP
of all the node's packages, all of its memory in use); ``slack_s`` covers a counter that refreshes every
``update_period_s`` (or a remote value polled late), whose energy can land in one short interval.
Units: J, s, W.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

MAX_POWER_W: dict[str, float] = {"gpu": 1500.0, "cpu": 1000.0, "dram": 300.0}
"""Hard upper bounds of one counter's power (W): above any single GPU (H200 700 W, B200 1000 W), CPU
package (the largest server parts draw ~500 W) or DRAM domain in service today."""

StepKind = Literal["ok", "reset", "reordered", "dropped"]


@dataclass(frozen=True)
class Limits:
    """Physical bounds of counter steps. ``max_power_w``: per domain (W; a domain not named is
    unbounded); ``slack_s``: extra time one interval may carry (counter update period, remote
    polling staleness); ``slack_j``: resolution at both ends (J). ``key_max_power_w``: per counter
    key, the most its meter says it can show (W, ``MeterInfo.max_power_w``); it raises the domain's
    bound for that key, never lowers it: a whole-node estimate (``cpu:node`` = busy CPU time x
    TDP / cores, up to the configured TDP of all the node's packages) can show more than one
    package's generic bound, and its steps are no less real for that."""

    max_power_w: Mapping[str, float] = field(default_factory=lambda: dict(MAX_POWER_W))
    slack_s: float = 0.0
    slack_j: float = 0.0
    key_max_power_w: Mapping[str, float] = field(default_factory=dict)

    def bound_j(self, key: str, dt_s: float) -> float:
        """The most energy counter ``key`` can show over ``dt_s`` seconds. Units: J."""
        max_w = max(self.max_power_w.get(key.split(":", 1)[0], math.inf), self.key_max_power_w.get(key, 0.0))
        if math.isinf(max_w):
            return math.inf
        return max_w * (max(dt_s, 0.0) + self.slack_s) + self.slack_j

    @staticmethod
    def unbounded() -> Limits:
        return Limits(max_power_w={})


def counter_step(
    key: str, before: float, value: float, dt_s: float, limits: Limits, driver_reset: bool = False
) -> tuple[float, StepKind]:
    """The energy of one interval of counter ``key`` (``before`` -> ``value`` over ``dt_s``), and what
    kind of step it was (see the module doc). The delta is never negative nor above the bound."""
    bound = limits.bound_j(key, dt_s)
    if value < 0:  # no counter counts below zero: a corrupt read, the old value stays the baseline
        return 0.0, "reordered"
    if driver_reset or value < before:
        if value <= bound:
            return value, "reset"
        # restarted inside the interval yet showing more than it could draw since: not believed
        return (0.0, "dropped") if driver_reset else (0.0, "reordered")
    delta = value - before
    if delta > bound:
        return 0.0, "dropped"
    return delta, "ok"


def dropped_j(before: float, value: float, driver_reset: bool = False) -> float:
    """The energy a ``dropped`` step claimed: the new value after a restart the meter reported, else
    the forward step. Units: J."""
    return value if driver_reset else value - before


def baseline_after(before: float, value: float, kind: StepKind) -> float:
    """The value the next step is taken from: the old one after a reordering, else the new one."""
    return before if kind == "reordered" else value
