"""The periodic sampler: reads the replica's meter and feeds the ledger, every ``period_s`` while a
request weighted step by step is open (an LLM under the ``tokens`` rule), else every
``coarse_period_s`` (``COARSE_PERIOD_S``).

Every request's own reads at ``begin`` and ``end`` bound its window, so the set of sharers is constant
inside every interval, and splitting one interval by fixed weights gives what splitting its parts would:
periodic reads change no request's share there. They matter where weights move inside a request: a
stepped request's tokens arrive step by step, and a reading closes the interval they are weighed in.
So only then does the sampler read often; otherwise once a second (counters are seen well within
any wrap period, and ``ReplicaEnergy.totals`` reads up to now anyway). Reading every 50 ms on every
replica and router cost CPU for nothing (``benchmarks/bench_idle_cpu.py``). A stepped request
opening wakes the sampler (``wake``). A meter that integrates power readings (``nvml-power``) is
read every ``period_s`` throughout: there the reads are the measurement.

``failed_reads`` counts every read that failed (the sampler's, the request path's, the first), so a
meter that fails while the replica is idle shows too (the deployment exports it as
``accuwatt_meter_errors``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping

from serve_app.energy.base import Meter, MeterError, Reading, now_s
from serve_app.energy.counters import Limits
from serve_app.energy.ledger import Ledger

log = logging.getLogger(__name__)


COARSE_PERIOD_S = 1.0
"""Read period (s) while no stepped request is open (never below ``period_s``)."""
MAX_POWER_REFRESH_S = 1.0
"""How often the ledger's bounds look at the meter's ``max_power_w`` again (s)."""


class Sampler:
    def __init__(self, meter: Meter, period_s: float, coarse_period_s: float = COARSE_PERIOD_S) -> None:
        self.meter = meter
        self.period_s = period_s
        integrates = meter.info.source == "nvml-power"
        self.coarse_period_s = period_s if integrates else max(period_s, coarse_period_s)
        self.error: str | None = None
        self._failed_reads = 0
        self._failed_lock = threading.Lock()  # reads come from the request path and the thread
        try:
            first = meter.read()
        except MeterError as exc:  # failing from the start: an empty origin, counters appear later
            self._count_failure()
            self.error = str(exc)
            first = Reading(now_s(), {}, meter.info.source)
        info = meter.info
        # the meter's own bounds as it says them at each step: an account share learns them at its
        # first poll, which may come after this
        self.ledger = Ledger(
            first, meter_limits(info.update_period_s + info.lag_s, info.resolution_j, _MaxPowerOf(meter))
        )
        self.cpu_s = 0.0  # CPU time the sampler thread itself used (s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._coarse = False  # the thread waits on ``_wake`` (no stepped request was open)
        self._thread = threading.Thread(target=self._run, name="accuwatt-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    @property
    def failed_reads(self) -> int:
        """Meter reads that failed since the sampler started (cumulative)."""
        return self._failed_reads

    def _count_failure(self) -> None:
        with self._failed_lock:
            self._failed_reads += 1

    def read(self) -> Reading | None:
        """A reading for the request path, or None while the meter is failing."""
        try:
            reading = self.meter.read()
        except MeterError as exc:
            self._count_failure()
            if self.error is None:
                log.error("energy meter failed, tags are 'unavailable' until it recovers: %s", exc)
            self.error = str(exc)
            return None
        if self.error is not None:
            log.warning("energy meter recovered")
            self.error = None
            self.ledger.rebase(reading)
        return reading

    def wake(self) -> None:
        """A stepped request opened: back to ``period_s`` if the thread is waiting a coarse period."""
        if self._coarse:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            # ``_coarse`` is set before the open requests are looked at: a stepped request that opens
            # after that sees it and wakes the thread (``begin`` adds the request before ``wake``)
            self._coarse = True
            if self.ledger.stepped_open:
                self._coarse = False
                if self._stop.wait(self.period_s):
                    break
            else:
                woken = self._wake.wait(self.coarse_period_s)
                self._coarse = False
                self._wake.clear()
                if woken:
                    continue  # the request's own read began the interval; sample a period later
            t0 = time.thread_time()
            self.sample()
            self.cpu_s += time.thread_time() - t0

    def sample(self) -> None:
        """Read the meter and close the ledger's interval up to now (a failing meter: nothing)."""
        reading = self.read()
        if reading is not None:
            self.ledger.observe(reading)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # started (metering off never starts it)
            self._thread.join(timeout=2 * self.period_s + 1)
        self.meter.close()


class _MaxPowerOf(Mapping[str, float]):
    """A meter's ``MeterInfo.max_power_w`` as it is now (W per counter key): an account share learns
    it at its first poll, which may come after the sampler starts. Looked up again at most every
    ``MAX_POWER_REFRESH_S`` (some meters build their info on every call)."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._values: dict[str, float] = {}
        self._read_s = float("-inf")

    def _now(self) -> dict[str, float]:
        t = time.monotonic()
        if t - self._read_s >= MAX_POWER_REFRESH_S:
            self._values, self._read_s = dict(self._meter.info.max_power_w), t
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._now()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())


def meter_limits(
    update_period_s: float, resolution_j: float, max_power_w: Mapping[str, float] | None = None
) -> Limits:
    """Physical bounds for a meter's counters: the default maximum power per domain (raised for a
    counter whose meter says it can show more, ``MeterInfo.max_power_w``), with one counter update
    period (or remote polling staleness) of slack and the resolution at both ends."""
    return Limits(slack_s=update_period_s, slack_j=2 * resolution_j, key_max_power_w=max_power_w or {})
