"""The periodic sampler: reads the replica's meter every ``period_s`` and feeds the ledger.

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


class Sampler:
    def __init__(self, meter: Meter, period_s: float) -> None:
        self.meter = meter
        self.period_s = period_s
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

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            t0 = time.thread_time()
            reading = self.read()
            if reading is not None:
                self.ledger.observe(reading)
            self.cpu_s += time.thread_time() - t0

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started (metering off never starts it)
            self._thread.join(timeout=2 * self.period_s + 1)
        self.meter.close()


def meter_limits(update_period_s: float, resolution_j: float) -> Limits:
    """Physical bounds for a meter's counters: the default maximum power per domain, with one counter
    update period (or remote polling staleness) of slack and the resolution at both ends."""
    return Limits(slack_s=update_period_s, slack_j=2 * resolution_j)
