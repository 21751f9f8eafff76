"""The periodic sampler: reads the replica's meter every ``period_s`` while requests are open and feeds
the ledger.

With no request open it reads only every ``idle_period_s`` (``IDLE_PERIOD_S``): an interval nobody
shares goes to idle whatever its length, and each request's own reads at ``begin`` and ``end`` bound
its window, so sampling an idle replica 20 times a second bought nothing and cost CPU on every replica
and router (measured with ``benchmarks/bench_idle_cpu.py``). A request opening wakes it (``wake``). The
idle reads remain so that counters are seen well within any wrap period and the totals stay fresh.

A meter that fails (``MeterError``) puts the sampler in the ``unavailable`` state: tags then carry
``source="unavailable"`` and no joules, and the failure is logged once; it recovers by itself when
reads succeed again (the next good reading is a fresh origin, so the gap is not attributed).
"""

from __future__ import annotations

import logging
import threading
import time

from serve_app.energy.base import Meter, MeterError, Reading, now_s
from serve_app.energy.counters import Limits
from serve_app.energy.ledger import Ledger

log = logging.getLogger(__name__)


IDLE_PERIOD_S = 1.0
"""Read period (s) while no request is open (never below ``period_s``)."""


class Sampler:
    def __init__(self, meter: Meter, period_s: float, idle_period_s: float = IDLE_PERIOD_S) -> None:
        self.meter = meter
        self.period_s = period_s
        self.idle_period_s = max(period_s, idle_period_s)
        self.error: str | None = None
        try:
            first = meter.read()
        except MeterError as exc:  # failing from the start: an empty origin, counters appear later
            self.error = str(exc)
            first = Reading(now_s(), {}, meter.info.source)
        info = meter.info
        self.ledger = Ledger(first, meter_limits(info.update_period_s, info.resolution_j))
        self.cpu_s = 0.0  # CPU time the sampler thread itself used (s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = False  # the thread waits on ``_wake`` (no request was open)
        self._thread = threading.Thread(target=self._run, name="accuwatt-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def read(self) -> Reading | None:
        """A reading for the request path, or None while the meter is failing."""
        try:
            reading = self.meter.read()
        except MeterError as exc:
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
        """A request opened: back to ``period_s`` if the thread is waiting out an idle period."""
        if self._idle:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            # ``_idle`` is set before the open count is read: a request that opens after the read sees
            # it and wakes the thread (``begin`` adds the request before ``wake``)
            self._idle = True
            if self.ledger.open_requests:
                self._idle = False
                if self._stop.wait(self.period_s):
                    break
            else:
                woken = self._wake.wait(self.idle_period_s)
                self._idle = False
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


def meter_limits(update_period_s: float, resolution_j: float) -> Limits:
    """Physical bounds for a meter's counters: the default maximum power per domain, with one counter
    update period (or remote polling staleness) of slack and the resolution at both ends."""
    return Limits(slack_s=update_period_s, slack_j=2 * resolution_j)
