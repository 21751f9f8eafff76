"""Per-replica attribution ledger: meter deltas split among the requests that shared each interval.

The ledger is fed readings (from the periodic sampler and at every request start and end), so the
set of active requests is constant inside every interval between two readings. Each interval's
energy, per counter, goes to the requests active in it in proportion to their weights, or to
**idle** when none is active. Hence, exactly (up to float rounding):

    metered = attributed + idle              (over any window, per counter)

and no request gets negative energy. Counter steps follow ``counters.counter_step``: a backward step
is a reset (delta = the new value, counted in ``resets``) only when the counter restarted near zero or
the meter says so, otherwise a reordering (delta 0, counted in ``reorders``); a step above the physical
bound is dropped (counted in ``dropped``, its joules in ``dropped_j``, never attributed). A request
active in an interval with a reset, reordering or drop carries a flag naming it. RAPL wrap-around is
undone by the meter, which knows the counter range.

Rules (``EnergyConfig.attribution``):
- ``time``: equal shares among the requests active in the interval (pure time overlap).
- ``texts``: shares proportional to each request's number of texts.
- ``tokens``: proportional to each request's token count (prompt tokens known at start; the LLM
  classifier may update the weight when generation ends).

Units: J, s. Thread-safe: the sampler thread and request handlers call in concurrently.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from serve_app.energy.base import Reading
from serve_app.energy.counters import Limits, baseline_after, counter_step

COUNTER_RESET_NOTE = "counter reset detected: delta taken as the new value"
STEP_FLAGS = {"reset": "counter_reset", "reordered": "counter_reordered", "dropped": "counter_above_bound"}


@dataclass
class _Open:
    weight: float
    start_s: float
    energy_j: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    intervals: int = 0
    max_sharers: int = 1
    flags: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Allocation:
    """A finished request's share. ``energy_j`` per counter key; ``domain_j`` summed per domain."""

    request_id: str
    start_s: float
    end_s: float
    energy_j: dict[str, float]
    domain_j: dict[str, float]
    weight: float
    intervals: int
    max_sharers: int
    flags: tuple[str, ...] = ()

    @property
    def joules(self) -> float:
        return sum(self.energy_j.values())

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class LedgerTotals:
    """Cumulative totals since the ledger started. Units: J (per counter key) and s."""

    metered_j: dict[str, float]
    attributed_j: dict[str, float]
    idle_j: dict[str, float]
    started_s: float
    last_s: float
    readings: int
    resets: int
    requests: int
    reorders: int = 0
    dropped: int = 0
    dropped_j: float = 0.0

    @staticmethod
    def _by_domain(d: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for k, v in d.items():
            out[Reading.domain_of(k)] += v
        return dict(out)

    def domains(self) -> dict[str, dict[str, float]]:
        return {
            "metered": self._by_domain(self.metered_j),
            "attributed": self._by_domain(self.attributed_j),
            "idle": self._by_domain(self.idle_j),
        }


class Ledger:
    """Splits metered energy among concurrent requests. See the module doc for the rule."""

    def __init__(self, first: Reading, limits: Limits | None = None) -> None:
        self._lock = threading.Lock()
        self._limits = limits or Limits()
        self._last = first
        self._base: dict[str, float] = dict(first.energy_j)  # per counter: the value steps are taken from
        self._started_s = first.t_s
        self._open: dict[str, _Open] = {}
        self._metered: dict[str, float] = defaultdict(float)
        self._attributed: dict[str, float] = defaultdict(float)
        self._idle: dict[str, float] = defaultdict(float)
        self._readings = 1
        self._resets = 0
        self._reorders = 0
        self._dropped = 0
        self._dropped_j = 0.0
        self._requests = 0
        self._counter_changes: list[float] = []  # times a counter was seen to change (update period)
        self._last_change_s = first.t_s

    # -- feeding -------------------------------------------------------------------------------
    def observe(self, reading: Reading) -> None:
        """Close the interval since the previous reading and allocate its energy."""
        with self._lock:
            self._observe(reading)

    def _observe(self, reading: Reading) -> None:
        prev = self._last
        if reading.t_s < prev.t_s:  # out-of-order sample (another thread read first): ignore
            return
        deltas: dict[str, float] = {}
        flags: set[str] = set()
        dt_s = reading.t_s - prev.t_s
        for key, value in reading.energy_j.items():
            before = self._base.get(key)
            if before is None:
                self._base[key] = value  # a counter that appeared now: its origin is this reading
                continue
            delta, kind = counter_step(key, before, value, dt_s, self._limits, key in reading.reset_keys)
            self._base[key] = baseline_after(before, value, kind)
            if kind != "ok":
                flags.add(STEP_FLAGS[kind])
                self._resets += kind == "reset"
                self._reorders += kind == "reordered"
                if kind == "dropped":
                    self._dropped += 1
                    self._dropped_j += value - before
            if delta:
                deltas[key] = delta
        for o in self._open.values():
            o.flags |= flags
        if deltas and reading.t_s > self._last_change_s:
            self._counter_changes.append(reading.t_s - self._last_change_s)
            self._counter_changes = self._counter_changes[-64:]
            self._last_change_s = reading.t_s
        self._last = reading
        self._readings += 1
        total_w = sum(o.weight for o in self._open.values())
        for key, delta in deltas.items():
            self._metered[key] += delta
            if not self._open or total_w <= 0:
                self._idle[key] += delta
                continue
            for o in self._open.values():
                share = delta * (o.weight / total_w)
                o.energy_j[key] += share
                self._attributed[key] += share
        if self._open and reading.t_s > prev.t_s:  # a batch re-observing one reading is no new interval
            n = len(self._open)
            for o in self._open.values():
                o.intervals += 1
                o.max_sharers = max(o.max_sharers, n)

    # -- requests ------------------------------------------------------------------------------
    def begin(self, request_id: str, reading: Reading, weight: float = 1.0) -> None:
        """Start a request at ``reading`` (which closes the interval before it)."""
        with self._lock:
            self._observe(reading)
            if request_id in self._open:
                raise KeyError(f"request {request_id!r} is already open")
            self._open[request_id] = _Open(weight=max(weight, 1e-9), start_s=reading.t_s)

    def reweight(self, request_id: str, weight: float) -> None:
        """Change a request's weight for the intervals that follow (e.g. tokens once known)."""
        with self._lock:
            if request_id in self._open:
                self._open[request_id].weight = max(weight, 1e-9)

    def end(self, request_id: str, reading: Reading) -> Allocation:
        """Finish a request at ``reading`` and return its share of every interval it was active in."""
        with self._lock:
            self._observe(reading)
            o = self._open.pop(request_id)
            self._requests += 1
            energy = dict(o.energy_j)
            by_domain: dict[str, float] = defaultdict(float)
            for k, v in energy.items():
                by_domain[Reading.domain_of(k)] += v
            return Allocation(
                request_id,
                o.start_s,
                reading.t_s,
                energy,
                dict(by_domain),
                o.weight,
                o.intervals,
                o.max_sharers,
                tuple(sorted(o.flags)),
            )

    def abandon(self, request_id: str, reading: Reading | None) -> None:
        """A request that failed (or whose end could not be metered): its share so far stays
        attributed (it was spent), nothing is returned."""
        with self._lock:
            if reading is not None:
                self._observe(reading)
            if self._open.pop(request_id, None) is not None:
                self._requests += 1

    def rebase(self, reading: Reading) -> None:
        """Take ``reading`` as a new origin without allocating the gap before it (after a meter
        outage the energy of the gap is unknown: it is neither metered nor attributed)."""
        with self._lock:
            if reading.t_s >= self._last.t_s:
                self._last = reading
                self._base = dict(reading.energy_j)
                self._last_change_s = reading.t_s

    # -- views ---------------------------------------------------------------------------------
    @property
    def open_requests(self) -> int:
        return len(self._open)

    def totals(self) -> LedgerTotals:
        with self._lock:
            return LedgerTotals(
                dict(self._metered),
                dict(self._attributed),
                dict(self._idle),
                self._started_s,
                self._last.t_s,
                self._readings,
                self._resets,
                self._requests,
                self._reorders,
                self._dropped,
                self._dropped_j,
            )

    def observed_update_period_s(self) -> float | None:
        """Median time between readings in which any counter changed (an upper bound on the
        counter's refresh period when sampling faster than it updates)."""
        with self._lock:
            xs = sorted(self._counter_changes)
        return xs[len(xs) // 2] if xs else None
