"""What a classifier replica needs of energy: a window per request, and a snapshot of the totals.

`ReplicaEnergy` owns the replica's meter, its sampler and its ledger; the deployment sees only this
interface. ``open`` brackets a request (its first reading, its weight, whether the engine reports its
work step by step); the window's ``close`` gives the request's `EnergyTag`, ``abandon`` keeps what a
failed request already used attributed (it was spent). ``settle``, awaited before a window opens and
before it closes, waits until the meter's counters are current: a meter that caches other nodes'
counters (``agents.MultiNodeMeter``) asks for them then; other meters read theirs when asked. With
metering off every window closes into an ``off`` tag; while the meter fails, into an ``unavailable``
tag without joules.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import Meter, MeterInfo, Reading, now_s
from serve_app.energy.keys import joules_by_node
from serve_app.energy.ledger import LedgerTotals
from serve_app.energy.sampler import Sampler
from serve_app.energy.tag import EnergyTag, make_tag, no_energy_tag

Settle = Callable[[float], Awaitable[bool]]
"""Waits until a ``read()`` shows every counter as of the given time; False if it gave up."""


class RequestWindow:
    """One request's share of the replica's meter, from ``ReplicaEnergy.open`` to ``close``."""

    def __init__(self, owner: ReplicaEnergy, key: str, start: Reading | None, stepped: bool) -> None:
        self._owner = owner
        self.key = key
        """Ledger key: unique to this call whatever id the client sent."""
        self._start = start
        self.stepped = stepped
        """The engine reports this request's work through `work` (the ``tokens`` rule on an LLM)."""

    def work(self, prefill_tokens: int, decode_tokens: int) -> None:
        """Tokens an engine step processed for this request (see ``Ledger.work``)."""
        self._owner.sampler.ledger.work(self.key, prefill_tokens, decode_tokens)

    def close(self, tokens: tuple[int, int] | None = None, late: bool = False) -> EnergyTag:
        """End the window and return the request's tag. ``tokens``: (prompt, generated) of its texts;
        ``late``: ``ReplicaEnergy.settle`` gave up at an end of the window (flag ``remote_counters_late``)."""
        owner = self._owner
        if not owner.metering:
            return no_energy_tag(owner.replica, owner.info, "metering is off", source="off")
        end = owner.sampler.read()
        if self._start is None or end is None:
            owner.sampler.ledger.abandon(self.key, None)
            return no_energy_tag(owner.replica, owner.info, owner.sampler.error or "meter failed")
        alloc = owner.sampler.ledger.end(self.key, end)
        tag = make_tag(alloc, owner.info, owner.rule, owner.replica, tokens, late)
        tag.flags.extend(owner.coverage_flags)
        return tag

    def abandon(self) -> None:
        """The request failed: what it used so far stays attributed, no tag."""
        if self._owner.metering:
            self._owner.sampler.ledger.abandon(self.key, self._owner.sampler.read())


class ReplicaEnergy:
    """A replica's meter, sampled periodically, split among its requests (``energy/ledger.py``).
    ``coverage_flags``: what every tag of this replica must say about what its meter misses;
    ``settle``: how the ends of a window wait for the meter's counters, for a meter that caches them
    (``footprint.settle_of``), else None."""

    def __init__(
        self,
        meter: Meter,
        cfg: EnergyConfig,
        replica: str,
        coverage_flags: list[str],
        settle: Settle | None = None,
    ) -> None:
        self.metering = cfg.meter != "off"
        self._settle = settle
        self.rule = cfg.attribution
        self.replica = replica
        self.coverage_flags = list(coverage_flags)
        self.sampler = Sampler(meter, cfg.sample_period_s)
        self._calls = itertools.count()  # next() is atomic under the GIL
        if self.metering:
            self.sampler.start()

    @property
    def info(self) -> MeterInfo:
        return self.sampler.meter.info

    @property
    def meter(self) -> Meter:
        return self.sampler.meter

    @property
    def error(self) -> str | None:
        """Why the meter is failing now (tags say ``unavailable``), or None."""
        return self.sampler.error

    @property
    def failed_reads(self) -> int:
        """Meter reads that failed since the replica started, idle or not."""
        return self.sampler.failed_reads

    async def settle(self) -> bool:
        """Wait until a reading shows every counter as of now (other nodes' asked for now, one round
        trip); at once on one node or with metering off. False if they did not come in time."""
        if self._settle is None or not self.metering:
            return True
        return await self._settle(now_s())

    def open(self, request_id: str, weight: float, stepped: bool = False) -> RequestWindow:
        """Start a request's window. ``request_id`` is the client's correlation id (not unique)."""
        key = f"{request_id}#{next(self._calls)}"
        if not self.metering:
            return RequestWindow(self, key, None, False)
        start = self.sampler.read()
        stepped = stepped and start is not None
        if start is not None:
            self.sampler.ledger.begin(key, start, weight, stepped=stepped)
            if stepped:
                self.sampler.wake()
        return RequestWindow(self, key, start, stepped)

    def totals(self) -> LedgerTotals:
        """The ledger's totals up to now: sampled first (the sampler may be a second behind)."""
        if self.metering:
            self.sampler.sample()
        return self.sampler.ledger.totals()

    def snapshot(self) -> dict[str, Any]:
        """The replica's totals since it started (``/v1/energy``'s per-replica row). Units: J, s."""
        t = self.totals()
        info = self.info
        ledger = self.sampler.ledger
        return {
            "source": "unavailable" if self.error else info.source,
            "node": info.node,
            "devices": list(info.devices),
            "metered_j": sum(t.metered_j.values()),
            "attributed_j": sum(t.attributed_j.values()),
            "idle_j": sum(t.idle_j.values()),
            "held_j": sum(t.held_j.values()),  # stepped LLM requests' intervals awaiting their tokens
            "domains": t.domains(),
            "nodes_j": joules_by_node(t.metered_j, info.node),
            "window_s": [t.started_s, t.last_s],
            "sample_period_s": self.sampler.period_s,
            "counter_update_period_s": ledger.observed_update_period_s(),
            "nominal_update_period_s": info.update_period_s,
            "counter_lag_s": info.lag_s,  # remote counters held from a poll, when a window could not wait
            "edge_error_j": info.edge_error_j,  # an account share's recent largest miss over a tick period
            "missed_j": info.missed_j,  # ... its misses summed: a replay run's drift bound (``replay.window``)
            "adjusted_j": t.adjusted_j,  # ... what it moved on top of its extrapolation, cumulative
            "max_power_w": dict(info.max_power_w),  # per counter, the most its device can draw
            "resolution_j": info.resolution_j,
            "requests": t.requests,
            "open_requests": ledger.open_requests,
            "resets": t.resets,
            "reorders": t.reorders,
            "dropped": t.dropped,
            "dropped_j": t.dropped_j,
            "readings": t.readings,
            "sampler_cpu_s": self.sampler.cpu_s,
            "error": self.error,
        }

    def close(self) -> None:
        self.sampler.stop()
