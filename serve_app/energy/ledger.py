"""Per-replica attribution ledger: meter deltas split among the requests that shared each interval.

The ledger is fed readings (from the periodic sampler and at every request start and end), so the
set of active requests is constant inside every interval between two readings. Each interval's
energy, per counter, goes to the requests active in it in proportion to their weights, or to
**idle** when none is active. Hence, exactly (up to float rounding):

    metered = attributed + idle (+ held)     (over any window, per counter; held: see below)

and no request gets negative energy. Counter steps follow ``counters.counter_step``: a backward step
is a reset (delta = the new value, counted in ``resets``) only when the counter restarted near zero or
the meter says so, otherwise a reordering (delta 0, counted in ``reorders``); a step above the physical
bound is dropped (counted in ``dropped``, its joules in ``dropped_j``, never attributed). A request
active in an interval with a reset, reordering or drop carries a flag naming it. RAPL wrap-around is
undone by the meter, which knows the counter range.

Rules (``EnergyConfig.attribution``):
- ``time``: equal shares among the requests active in the interval (pure time overlap).
- ``texts``: shares proportional to each request's number of texts.
- ``tokens``: proportional to each request's token count. Traditional classifiers: an estimate from
  the texts, fixed at start. LLM requests are *stepped* (``begin(..., stepped=True)``): the classifier
  reports, through :meth:`Ledger.work`, the tokens the engine processed for the request at each step
  (its prefill: the prompt tokens not served from the prefix cache; then one per decode step).

Stepped requests: an interval's energy is split among the stepped requests active in it in
proportion to the tokens reported for them since the last split; a request with no tokens reported
gets none of it (a request not stepped active beside them keeps its standing-weight share). The
engine reports a step when its output reaches the replica, which may be several readings after the
step began, so intervals in which no sharer reported any work are *held* (with
the set of requests active in them) until work is reported, and then split by that work among their
own sharers. A held interval whose sharers report nothing before one of them ends falls back to the
standing weights (``begin``'s ``weight``): that share is the request's ``unstepped_j``. Each share is
divided between ``prefill_j`` and ``decode_j`` in proportion to the request's reported prefill and
decode tokens. Held energy is metered but not yet attributed: ``metered = attributed + idle + held``,
and ``held`` is 0 whenever no request is open.

Units: J, s, tokens. Thread-safe: the sampler thread and request handlers call in concurrently.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from serve_app.energy.base import Reading
from serve_app.energy.counters import Limits, baseline_after, counter_step, dropped_j

COUNTER_RESET_NOTE = "counter reset detected: delta taken as the new value"
METER_GAP = "meter_gap"
"""The flag of a request open across a meter outage (see ``Ledger.rebase``)."""
STEP_FLAGS = {"reset": "counter_reset", "reordered": "counter_reordered", "dropped": "counter_above_bound"}


@dataclass
class _Open:
    weight: float
    start_s: float
    energy_j: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    intervals: int = 0
    max_sharers: int = 1
    stepped: bool = False
    opened_stretch: bool = False  # no other request was open when it began
    adjusted0_j: float = 0.0  # the meter's cumulative adjustment at the request's start
    new_prefill: int = 0  # tokens reported since the last split
    new_decode: int = 0
    prefill_tokens: int = 0  # tokens reported in all
    decode_tokens: int = 0
    prefill_j: float = 0.0
    decode_j: float = 0.0
    flags: set[str] = field(default_factory=set)


@dataclass
class _Held:
    """Energy of consecutive intervals with the same sharers, waiting for their reported work."""

    deltas: dict[str, float]
    sharers: tuple[str, ...]


@dataclass(frozen=True)
class StepShare:
    """A stepped request's work and its energy by phase. Units: tokens, J.
    ``unstepped_j``: the part split by standing weight (no sharer reported work in those intervals)."""

    prefill_tokens: int
    decode_tokens: int
    prefill_j: float
    decode_j: float
    unstepped_j: float


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
    steps: StepShare | None = None
    """Stepped requests only (see the module doc)."""
    flags: tuple[str, ...] = ()
    opened_stretch: bool = False
    """No other request was open when it began: it opened a stretch of busy time. Over a run the
    errors at the edges of back-to-back requests cancel in the sum; what remains is the error at the
    two ends of each stretch (``replay.summary``)."""
    adjusted_j: float = 0.0
    """What the meter moved its values by on top of its extrapolation while the request was open
    (``Reading.adjusted_j`` at its end minus at its start; every sharer's, not its share): energy
    its window showed and did not draw, or drew and did not show (``make_tag`` adds it to the
    uncertainty)."""

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
    held_j: dict[str, float] = field(default_factory=dict)
    """Metered in intervals shared by stepped requests, not split yet (see the module doc)."""
    reorders: int = 0
    dropped: int = 0
    dropped_j: float = 0.0
    adjusted_j: float = 0.0
    """The meter's cumulative adjustment at the last reading (``Reading.adjusted_j``)."""

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
            "held": self._by_domain(self.held_j),
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
        self._held: list[_Held] = []
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
            driver_reset = key in reading.reset_keys
            delta, kind = counter_step(key, before, value, dt_s, self._limits, driver_reset)
            self._base[key] = baseline_after(before, value, kind)
            if kind != "ok":
                flags.add(STEP_FLAGS[kind])
                self._resets += kind == "reset"
                self._reorders += kind == "reordered"
                if kind == "dropped":
                    self._dropped += 1
                    self._dropped_j += dropped_j(before, value, driver_reset)
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
        for key, delta in deltas.items():
            self._metered[key] += delta
            if not self._open:
                self._idle[key] += delta
        if self._open and deltas:
            if any(o.stepped for o in self._open.values()):
                self._hold(deltas)
            else:
                self._split_by_weight(deltas, list(self._open.values()))
        if self._held and any(o.new_prefill or o.new_decode for o in self._open.values()):
            self._settle(final=False)  # work reported before any energy appeared waits for that energy
        if self._open and reading.t_s > prev.t_s:  # a batch re-observing one reading is no new interval
            n = len(self._open)
            for o in self._open.values():
                o.intervals += 1
                o.max_sharers = max(o.max_sharers, n)

    def _split_by_weight(self, deltas: dict[str, float], sharers: list[_Open]) -> None:
        total_w = sum(o.weight for o in sharers)
        for key, delta in deltas.items():
            for o in sharers:
                share = delta * (o.weight / total_w)
                o.energy_j[key] += share
                self._attributed[key] += share

    def _hold(self, deltas: dict[str, float]) -> None:
        sharers = tuple(self._open)
        if self._held and self._held[-1].sharers == sharers:
            last = self._held[-1].deltas
            for key, delta in deltas.items():
                last[key] = last.get(key, 0.0) + delta
        else:
            self._held.append(_Held(dict(deltas), sharers))

    def _settle(self, final: bool = True) -> None:
        """Split every held interval by the work its sharers reported since the last split; start
        counting work afresh. One none of whose sharers reported any: by standing weight when
        ``final`` (one of them is leaving), else it stays held for their work (another request's
        report is none of theirs)."""
        kept: list[_Held] = []
        for held in self._held:
            sharers = [self._open[r] for r in held.sharers]  # a request leaves only after a settle
            work = {id(o): (o.new_prefill + o.new_decode) if o.stepped else 0 for o in sharers}
            total = sum(work.values())
            if total <= 0:
                if final:
                    self._split_by_weight(held.deltas, sharers)
                else:
                    kept.append(held)
                continue
            # a request whose work is not reported step by step takes its standing-weight share; the
            # stepped sharers split the rest by their work
            plain = [o for o in sharers if not o.stepped]
            stepped_part = 1.0
            if plain:
                total_w = sum(o.weight for o in sharers)
                self._split_by_weight(
                    {k: d * sum(o.weight for o in plain) / total_w for k, d in held.deltas.items()}, plain
                )
                stepped_part = sum(o.weight for o in sharers if o.stepped) / total_w
            for o in sharers:
                if not work[id(o)]:
                    continue
                fraction = stepped_part * work[id(o)] / total
                prefill_part = o.new_prefill / work[id(o)]
                for key, delta in held.deltas.items():
                    share = delta * fraction
                    o.energy_j[key] += share
                    self._attributed[key] += share
                    o.prefill_j += share * prefill_part
                    o.decode_j += share * (1.0 - prefill_part)
        self._held = kept
        for o in self._open.values():
            o.new_prefill = o.new_decode = 0

    # -- requests ------------------------------------------------------------------------------
    def begin(self, request_id: str, reading: Reading, weight: float = 1.0, stepped: bool = False) -> None:
        """Start a request at ``reading`` (which closes the interval before it). ``weight``: its
        standing weight; ``stepped``: its work will be reported through :meth:`work`."""
        with self._lock:
            self._observe(reading)
            if request_id in self._open:
                raise KeyError(f"request {request_id!r} is already open")
            self._open[request_id] = _Open(
                weight=max(weight, 1e-9),
                start_s=reading.t_s,
                stepped=stepped,
                opened_stretch=not self._open,
                adjusted0_j=reading.adjusted_j,
            )

    def reweight(self, request_id: str, weight: float) -> None:
        """Change a request's standing weight for the intervals that follow."""
        with self._lock:
            if request_id in self._open:
                self._open[request_id].weight = max(weight, 1e-9)

    def work(self, request_id: str, prefill_tokens: int, decode_tokens: int) -> None:
        """Tokens the engine processed for a stepped request since its last report (prefill: prompt
        tokens computed; decode: one per step). A request that is no longer open is ignored (its
        output can arrive after it was abandoned)."""
        if prefill_tokens < 0 or decode_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {prefill_tokens}, {decode_tokens}")
        with self._lock:
            o = self._open.get(request_id)
            if o is None:
                return
            o.new_prefill += prefill_tokens
            o.new_decode += decode_tokens
            o.prefill_tokens += prefill_tokens
            o.decode_tokens += decode_tokens

    def end(self, request_id: str, reading: Reading) -> Allocation:
        """Finish a request at ``reading`` and return its share of every interval it was active in."""
        with self._lock:
            self._observe(reading)
            if request_id not in self._open:
                raise KeyError(f"request {request_id!r} is not open")
            if self._held:
                self._settle()
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
                _steps(o) if o.stepped else None,
                tuple(sorted(o.flags)),
                o.opened_stretch,
                max(reading.adjusted_j - o.adjusted0_j, 0.0),
            )

    def abandon(self, request_id: str, reading: Reading | None) -> None:
        """A request that failed (or whose end could not be metered): its share so far stays
        attributed (it was spent), nothing is returned."""
        with self._lock:
            if reading is not None:
                self._observe(reading)
            if self._held and request_id in self._open:
                self._settle()
            if self._open.pop(request_id, None) is not None:
                self._requests += 1

    def rebase(self, reading: Reading) -> None:
        """Take ``reading`` as a new origin without allocating the gap before it (after a meter
        outage the energy of the gap is unknown: it is neither metered nor attributed). Every request
        open across the gap is flagged ``meter_gap``: its figure lacks the gap's part."""
        with self._lock:
            for o in self._open.values():
                o.flags.add(METER_GAP)
            if reading.t_s >= self._last.t_s:
                self._last = reading
                self._base = dict(reading.energy_j)
                self._last_change_s = reading.t_s

    # -- views ---------------------------------------------------------------------------------
    @property
    def open_requests(self) -> int:
        return len(self._open)

    @property
    def stepped_open(self) -> bool:
        """Whether any open request is weighted by the work of each engine step."""
        return any(o.stepped for o in list(self._open.values()))

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
                self._held_by_key(),
                self._reorders,
                self._dropped,
                self._dropped_j,
                self._last.adjusted_j,
            )

    def _held_by_key(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for held in self._held:
            for key, delta in held.deltas.items():
                out[key] += delta
        return dict(out)

    def observed_update_period_s(self) -> float | None:
        """Median time between readings in which any counter changed (an upper bound on the
        counter's refresh period when sampling faster than it updates)."""
        with self._lock:
            xs = sorted(self._counter_changes)
        return xs[len(xs) // 2] if xs else None


def _steps(o: _Open) -> StepShare:
    joules = sum(o.energy_j.values())
    return StepShare(
        o.prefill_tokens,
        o.decode_tokens,
        o.prefill_j,
        o.decode_j,
        max(joules - o.prefill_j - o.decode_j, 0.0),
    )
