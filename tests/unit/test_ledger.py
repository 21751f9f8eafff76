"""The attribution ledger against a scripted counter source with its own clock (the vendor boundary
is a `Meter` whose readings are written out by hand). Units: J, s.

Every test checks conservation per counter: metered = attributed + idle (to 1e-9 relative), and
that no request and no idle bucket ever gets negative energy.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.energy.base import Meter, MeterInfo, Reading
from serve_app.energy.counters import Limits
from serve_app.energy.ledger import Allocation, Ledger

pytestmark = pytest.mark.unit


class ScriptedMeter:
    """A `Meter` whose ``read()`` returns scripted ``(t_s, {key: J})`` samples, in order."""

    def __init__(self, script: list[tuple[float, dict[str, float]]]) -> None:
        self._script: Iterator[tuple[float, dict[str, float]]] = iter(script)
        self._info = MeterInfo(source="rapl", devices=("scripted",), resolution_j=1e-6, update_period_s=0.001)

    @property
    def info(self) -> MeterInfo:
        return self._info

    def read(self) -> Reading:
        t_s, energy_j = next(self._script)
        return Reading(t_s=t_s, energy_j=dict(energy_j), source="rapl")

    def close(self) -> None:
        pass


class CountingMeter:
    """Thread-safe synthetic counter: every read advances the clock 1 ms and the counter 0.01 J."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    @property
    def info(self) -> MeterInfo:
        return MeterInfo(source="estimate", devices=("synthetic",), resolution_j=0.01, update_period_s=0.001)

    def read(self) -> Reading:
        with self._lock:
            self._n += 1
            return Reading(t_s=self._n * 1e-3, energy_j={"cpu:synthetic": self._n * 0.01}, source="estimate")

    def close(self) -> None:
        pass


def assert_conserved(ledger: Ledger, allocations: Sequence[Allocation] = ()) -> None:
    t = ledger.totals()
    for key, metered in t.metered_j.items():
        attributed = t.attributed_j.get(key, 0.0)
        idle = t.idle_j.get(key, 0.0)
        assert attributed >= 0 and idle >= 0
        assert math.isclose(metered, attributed + idle, rel_tol=1e-9, abs_tol=1e-12), (key, t)
    assert set(t.attributed_j) | set(t.idle_j) <= set(t.metered_j)
    for a in allocations:
        assert all(v >= 0 for v in a.energy_j.values()), a


def test_scripted_meter_is_a_meter() -> None:
    assert isinstance(ScriptedMeter([]), Meter)


def test_overlapping_requests_hand_computed() -> None:
    """A: [1, 4], B: [2, 5], equal weights. Per interval: 10 idle, 6 -> A, 6 -> A/B, 8 -> A/B, 4 -> B, 6 idle."""
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 10}), (2, {"cpu:0": 16}), (3, {"cpu:0": 22}),
                       (4, {"cpu:0": 30}), (5, {"cpu:0": 34}), (6, {"cpu:0": 40})])  # fmt: skip
    ledger = Ledger(m.read())
    ledger.begin("A", m.read())
    ledger.begin("B", m.read())
    ledger.observe(m.read())
    a = ledger.end("A", m.read())
    b = ledger.end("B", m.read())
    ledger.observe(m.read())
    assert a.energy_j == {"cpu:0": pytest.approx(6 + 3 + 4)}
    assert b.energy_j == {"cpu:0": pytest.approx(3 + 4 + 4)}
    assert (a.start_s, a.end_s, a.duration_s) == (1, 4, 3)
    assert (a.intervals, a.max_sharers, b.intervals, b.max_sharers) == (3, 2, 3, 2)
    t = ledger.totals()
    assert t.metered_j == {"cpu:0": 40} and t.idle_j == {"cpu:0": 16}
    assert t.attributed_j["cpu:0"] == pytest.approx(24)
    assert (t.readings, t.requests, t.resets) == (7, 2, 0)
    assert_conserved(ledger, [a, b])
    # A began with none open: it opened a stretch of busy time; B began inside it
    assert (a.opened_stretch, b.opened_stretch) == (True, False)
    ledger.begin("C", Reading(7, {"cpu:0": 41}, "rapl"))  # after an idle gap: a new stretch
    assert ledger.end("C", Reading(8, {"cpu:0": 42}, "rapl")).opened_stretch


def test_each_request_carries_what_the_meter_adjusted_during_its_own_window() -> None:
    """``Reading.adjusted_j`` is cumulative (a share's releases and settling); a request carries the
    part between its two readings, whoever else shared them, and none from before it began."""
    ledger = Ledger(Reading(0, {"cpu:0": 0}, "estimate", adjusted_j=5.0))
    ledger.begin("A", Reading(1, {"cpu:0": 1}, "estimate", adjusted_j=5.5))
    ledger.begin("B", Reading(2, {"cpu:0": 2}, "estimate", adjusted_j=5.75))
    a = ledger.end("A", Reading(3, {"cpu:0": 3}, "estimate", adjusted_j=6.0))
    b = ledger.end("B", Reading(4, {"cpu:0": 4}, "estimate", adjusted_j=6.0))
    assert (a.adjusted_j, b.adjusted_j) == (pytest.approx(0.5), pytest.approx(0.25))


def test_batch_by_texts_across_two_counters() -> None:
    """Three requests of 1, 2 and 3 texts begin and end at the same two readings (one batch)."""
    m = ScriptedMeter([(0, {"cpu:p0": 5, "dram:p0": 1}), (0.5, {"cpu:p0": 5, "dram:p0": 1}),
                       (1.5, {"cpu:p0": 17, "dram:p0": 7})])  # fmt: skip
    ledger = Ledger(m.read())
    start = m.read()
    for rid, texts in (("r1", 1), ("r2", 2), ("r3", 3)):
        ledger.begin(rid, start, weight=texts)
    stop = m.read()
    allocs = [ledger.end(rid, stop) for rid in ("r1", "r2", "r3")]
    assert [a.energy_j["cpu:p0"] for a in allocs] == pytest.approx([2, 4, 6])
    assert [a.energy_j["dram:p0"] for a in allocs] == pytest.approx([1, 2, 3])
    assert [a.domain_j for a in allocs] == [
        pytest.approx({"cpu": 2, "dram": 1}),
        pytest.approx({"cpu": 4, "dram": 2}),
        pytest.approx({"cpu": 6, "dram": 3}),
    ]
    assert allocs[2].joules == pytest.approx(9)
    # one interval each (0.5 -> 1.5 s), shared by three: re-observing the batch's reading adds none
    assert [(a.intervals, a.max_sharers) for a in allocs] == [(1, 3), (1, 3), (1, 3)]
    assert ledger.totals().idle_j == {}
    assert_conserved(ledger, allocs)


def test_end_and_begin_at_one_reading_do_not_share() -> None:
    """A ends and B begins at the same reading: they never shared an interval."""
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 4}), (2, {"cpu:0": 10})])
    first = m.read()
    ledger = Ledger(first)
    ledger.begin("A", first)
    handover = m.read()
    ledger.begin("B", handover)
    a = ledger.end("A", handover)
    b = ledger.end("B", m.read())
    assert (a.joules, a.intervals, a.max_sharers) == (4, 1, 1)
    assert (b.joules, b.intervals, b.max_sharers) == (6, 1, 1)
    assert_conserved(ledger, [a, b])


def test_idle_gaps_stay_idle() -> None:
    m = ScriptedMeter([(t, {"gpu:0": 100.0 * t}) for t in range(8)])
    ledger = Ledger(m.read())  # t=0
    ledger.observe(m.read())  # t=1: idle 100
    ledger.begin("x", m.read())  # t=2: idle 100
    x = ledger.end("x", m.read())  # t=3: x 100
    ledger.observe(m.read())  # t=4: idle 100
    ledger.observe(m.read())  # t=5: idle 100
    ledger.begin("y", m.read())  # t=6: idle 100
    y = ledger.end("y", m.read())  # t=7: y 100
    assert x.joules == pytest.approx(100) and y.joules == pytest.approx(100)
    assert ledger.totals().idle_j == {"gpu:0": pytest.approx(500)}
    assert ledger.open_requests == 0
    assert_conserved(ledger, [x, y])


def test_reweight_applies_to_later_intervals_only() -> None:
    """Tokens known at the end of prefill: weights 1:1 for the first interval, then 1:3."""
    m = ScriptedMeter([(0, {"gpu:0": 0}), (1, {"gpu:0": 8}), (2, {"gpu:0": 16})])
    first = m.read()
    ledger = Ledger(first)
    ledger.begin("a", first)
    ledger.begin("b", first)
    ledger.observe(m.read())  # 8 J: 4 / 4
    ledger.reweight("b", 3.0)
    ledger.reweight("gone", 5.0)  # unknown id: ignored
    r = m.read()  # 8 J: 2 / 6
    a, b = ledger.end("a", r), ledger.end("b", r)
    assert (a.joules, b.joules) == (pytest.approx(6), pytest.approx(10))
    assert b.weight == 3.0
    assert_conserved(ledger, [a, b])


def test_counter_reset_counts_new_value_never_negative() -> None:
    """A GPU driver reload: the counter restarts from 0 (100 J -> 5 J): the interval's delta is 5 J."""
    m = ScriptedMeter([(0, {"gpu:0": 90}), (1, {"gpu:0": 100}), (2, {"gpu:0": 5}), (3, {"gpu:0": 9})])
    ledger = Ledger(m.read())
    ledger.begin("r", m.read())
    ledger.observe(m.read())
    r = ledger.end("r", m.read())
    assert r.joules == pytest.approx(5 + 4)
    t = ledger.totals()
    assert t.resets == 1 and t.metered_j == {"gpu:0": pytest.approx(10 + 5 + 4)}
    assert_conserved(ledger, [r])


def test_counter_appearing_late_starts_at_its_first_reading() -> None:
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 1, "gpu:0": 5000}), (2, {"cpu:0": 2, "gpu:0": 5010})])
    ledger = Ledger(m.read())
    ledger.begin("r", m.read())
    r = ledger.end("r", m.read())
    assert r.energy_j == {"cpu:0": pytest.approx(1), "gpu:0": pytest.approx(10)}  # not 5010
    t = ledger.totals()
    assert t.metered_j == {"cpu:0": pytest.approx(2), "gpu:0": pytest.approx(10)}
    assert t.resets == 0
    assert_conserved(ledger, [r])


def test_out_of_order_reading_is_ignored() -> None:
    ledger = Ledger(Reading(0, {"cpu:0": 0}, "rapl"))
    ledger.observe(Reading(2, {"cpu:0": 20}, "rapl"))
    ledger.observe(Reading(1, {"cpu:0": 10}, "rapl"))  # read earlier by another thread, arrived later
    ledger.observe(Reading(3, {"cpu:0": 30}, "rapl"))
    t = ledger.totals()
    assert t.metered_j == {"cpu:0": 30} and t.resets == 0 and t.readings == 3


def test_abandon_keeps_spent_energy_attributed() -> None:
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 0}), (2, {"cpu:0": 6}), (3, {"cpu:0": 10})])
    ledger = Ledger(m.read())
    ledger.begin("ok", m.read())
    ledger.begin("fail", Reading(1, {"cpu:0": 0}, "rapl"))
    ledger.abandon("fail", m.read())  # 6 J: 3 / 3
    ok = ledger.end("ok", m.read())  # 4 J: all to ok
    assert ok.joules == pytest.approx(7)
    t = ledger.totals()
    assert t.attributed_j == {"cpu:0": pytest.approx(10)} and t.requests == 2
    ledger.abandon("unknown", None)
    assert_conserved(ledger, [ok])


def test_rebase_drops_the_gap() -> None:
    ledger = Ledger(Reading(0, {"cpu:0": 0}, "rapl"))
    ledger.begin("r", Reading(1, {"cpu:0": 1}, "rapl"))
    ledger.rebase(Reading(10, {"cpu:0": 500}, "rapl"))  # meter outage between 1 and 10 s
    r = ledger.end("r", Reading(11, {"cpu:0": 502}, "rapl"))
    assert r.joules == pytest.approx(2)
    assert "meter_gap" in r.flags  # its figure lacks the outage's energy, and says so
    assert ledger.totals().metered_j == {"cpu:0": pytest.approx(3)}
    assert_conserved(ledger, [r])


def test_only_requests_open_across_an_outage_are_flagged_meter_gap() -> None:
    ledger = Ledger(Reading(0, {"cpu:0": 0}, "rapl"))
    ledger.begin("across", Reading(1, {"cpu:0": 1}, "rapl"))
    ledger.rebase(Reading(10, {"cpu:0": 500}, "rapl"))
    ledger.begin("after", Reading(11, {"cpu:0": 502}, "rapl"))
    across = ledger.end("across", Reading(12, {"cpu:0": 504}, "rapl"))
    after = ledger.end("after", Reading(13, {"cpu:0": 506}, "rapl"))
    assert "meter_gap" in across.flags and "meter_gap" not in after.flags
    assert_conserved(ledger, [across, after])


def test_duplicate_begin_and_unknown_end_raise() -> None:
    ledger = Ledger(Reading(0, {"cpu:0": 0}, "rapl"))
    ledger.begin("r", Reading(1, {"cpu:0": 1}, "rapl"))
    with pytest.raises(KeyError):
        ledger.begin("r", Reading(2, {"cpu:0": 2}, "rapl"))
    with pytest.raises(KeyError):
        ledger.end("nope", Reading(3, {"cpu:0": 3}, "rapl"))
    assert_conserved(ledger)


def test_observed_update_period() -> None:
    """Sampling every 0.1 s a counter that refreshes every 0.3 s: the median change gap is 0.3 s."""
    ledger = Ledger(Reading(0.0, {"gpu:0": 0.0}, "nvml"))
    assert ledger.observed_update_period_s() is None
    for i in range(1, 31):
        ledger.observe(Reading(i / 10, {"gpu:0": float((i // 3) * 3)}, "nvml"))
    assert ledger.observed_update_period_s() == pytest.approx(0.3)


def test_threads_conserve_energy() -> None:
    """Four request threads and a sampler thread share one ledger and one thread-safe meter."""
    meter = CountingMeter()
    ledger = Ledger(meter.read())
    allocs: list[Allocation] = []
    lock = threading.Lock()

    def requests(tid: int) -> None:
        for i in range(300):
            rid = f"{tid}-{i}"
            ledger.begin(rid, meter.read(), weight=1 + i % 3)
            a = ledger.end(rid, meter.read())
            with lock:
                allocs.append(a)

    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            ledger.observe(meter.read())

    threads = [threading.Thread(target=requests, args=(i,)) for i in range(4)]
    s = threading.Thread(target=sampler)
    s.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    s.join()
    ledger.observe(meter.read())
    totals = ledger.totals()
    assert ledger.open_requests == 0 and totals.requests == 1200
    assert totals.attributed_j["cpu:synthetic"] == pytest.approx(sum(a.joules for a in allocs), rel=1e-9)
    assert totals.metered_j["cpu:synthetic"] <= meter.read().energy_j["cpu:synthetic"]
    assert_conserved(ledger, allocs)


# -- randomized: invariants and an independent reference on random schedules --------------------
KEYS = ("cpu:package-0", "dram:package-0", "gpu:0")

op_st = st.one_of(
    st.tuples(st.just("observe"), st.integers(0, 3)),
    st.tuples(st.just("begin"), st.integers(1, 8)),
    st.tuples(st.just("end"), st.integers(0, 7)),
    st.tuples(st.just("abandon"), st.integers(0, 7)),
    st.tuples(st.just("reweight"), st.integers(0, 7)),
    st.tuples(st.just("reset"), st.integers(0, 2)),
)
step_st = st.tuples(
    op_st,
    st.floats(0, 0.5, allow_nan=False),  # seconds advanced before the reading (0: same instant)
    st.lists(st.floats(0, 50, allow_nan=False), min_size=3, max_size=3),  # J added per key
    st.booleans(),  # a GPU counter appearing late
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step_st, min_size=1, max_size=60))
def test_random_schedules_conserve_and_match_reference(steps: list) -> None:
    t_s = 0.0
    counters = {"cpu:package-0": 1000.0, "dram:package-0": 200.0}
    # unbounded: this reference treats every backward step as a reset and has no physical bound
    # (the bounds and reorderings are tested in test_counters.py)
    ledger = Ledger(Reading(t_s, dict(counters), "rapl"), Limits.unbounded())
    # reference: plain per-interval bookkeeping, written independently of the ledger
    prev = dict(counters)
    weights: dict[str, float] = {}
    expect: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    metered: dict[str, float] = defaultdict(float)
    allocs: list[Allocation] = []
    next_id = 0

    for (op, arg), dt_s, adds, gpu_now in steps:
        t_s += dt_s
        if gpu_now and "gpu:0" not in counters:
            counters["gpu:0"] = 12345.0
        for key, add in zip(KEYS, adds, strict=True):
            if key in counters:
                counters[key] += add
        if op == "reset":
            counters[KEYS[arg] if KEYS[arg] in counters else KEYS[0]] = 0.5  # a restart from ~0
        reading = Reading(t_s, dict(counters), "rapl")
        for key, value in counters.items():  # reference allocation of the interval
            if key not in prev:
                continue
            delta = value if value < prev[key] else value - prev[key]
            metered[key] += delta
            total = sum(weights.values())
            for rid, w in weights.items():
                expect[rid][key] += delta * w / total
        prev = dict(counters)

        open_ids = sorted(weights)
        if op == "begin":
            rid = f"r{next_id}"
            next_id += 1
            ledger.begin(rid, reading, weight=float(arg))
            weights[rid] = float(arg)
        elif op in ("end", "abandon", "reweight") and open_ids:
            rid = open_ids[arg % len(open_ids)]
            if op == "end":
                a = ledger.end(rid, reading)
                allocs.append(a)
                del weights[rid]
                for key in set(a.energy_j) | set(expect[rid]):
                    assert math.isclose(
                        a.energy_j.get(key, 0.0), expect[rid][key], rel_tol=1e-9, abs_tol=1e-9
                    )
            elif op == "abandon":
                ledger.abandon(rid, reading)
                del weights[rid]
            else:
                ledger.observe(reading)  # the interval up to now keeps the old weights
                ledger.reweight(rid, float(arg + 1))
                weights[rid] = float(arg + 1)
        else:
            ledger.observe(reading)

    totals = ledger.totals()
    for key in set(metered) | set(totals.metered_j):
        assert math.isclose(totals.metered_j.get(key, 0.0), metered[key], rel_tol=1e-9, abs_tol=1e-9)
    assert_conserved(ledger, allocs)


# -- stepped requests: each interval split by the tokens the engine reported for it ---------------
def assert_stepped_conserved(ledger: Ledger, allocs: Sequence[Allocation] = ()) -> None:
    """metered = attributed + idle + held per counter; each stepped share splits into its phases."""
    t = ledger.totals()
    for key, metered in t.metered_j.items():
        parts = (t.attributed_j.get(key, 0.0), t.idle_j.get(key, 0.0), t.held_j.get(key, 0.0))
        assert all(p >= 0 for p in parts)
        assert math.isclose(metered, sum(parts), rel_tol=1e-9, abs_tol=1e-9), (key, t)
    if ledger.open_requests == 0:
        assert t.held_j == {}
    for a in allocs:
        assert a.steps is not None and all(v >= 0 for v in a.energy_j.values())
        s = a.steps
        assert min(s.prefill_j, s.decode_j, s.unstepped_j) >= 0
        assert math.isclose(s.prefill_j + s.decode_j + s.unstepped_j, a.joules, rel_tol=1e-9, abs_tol=1e-9)


def test_stepped_hand_computed() -> None:
    """A and B start together; readings come faster than the engine reports steps.

    t1 +10 J: no work yet (held). Prefill A 6, B 4 tokens; t2 +10 J: the 20 J held go 12 / 8.
    Decode 1 each; t3 +6 J: 3 / 3, then B ends. Decode A 1; t4 +4 J: all to A. t5 +3 J, no work
    reported before A ends: split by standing weight (A alone: 3 J unstepped)."""
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 10}), (2, {"cpu:0": 20}), (3, {"cpu:0": 26}),
                       (4, {"cpu:0": 30}), (5, {"cpu:0": 33})])  # fmt: skip
    first = m.read()
    ledger = Ledger(first)
    ledger.begin("A", first, weight=50, stepped=True)
    ledger.begin("B", first, weight=50, stepped=True)
    ledger.observe(m.read())
    assert ledger.totals().held_j == {"cpu:0": 10} and ledger.totals().attributed_j == {}
    ledger.work("A", 6, 0)
    ledger.work("B", 4, 0)
    ledger.observe(m.read())
    assert ledger.totals().held_j == {} and ledger.totals().attributed_j == {"cpu:0": pytest.approx(20)}
    ledger.work("A", 0, 1)
    ledger.work("B", 0, 1)
    b = ledger.end("B", m.read())
    ledger.work("A", 0, 1)
    ledger.work("B", 0, 1)  # B is gone: ignored
    ledger.observe(m.read())
    a = ledger.end("A", m.read())
    assert a.steps is not None and b.steps is not None
    assert (a.joules, b.joules) == (pytest.approx(22), pytest.approx(11))
    assert (a.steps.prefill_tokens, a.steps.decode_tokens, b.steps.prefill_tokens, b.steps.decode_tokens) == (
        6,
        2,
        4,
        1,
    )
    assert (a.steps.prefill_j, a.steps.decode_j, a.steps.unstepped_j) == (
        pytest.approx(12),
        pytest.approx(7),
        pytest.approx(3),
    )
    assert (b.steps.prefill_j, b.steps.decode_j, b.steps.unstepped_j) == (
        pytest.approx(8),
        pytest.approx(3),
        pytest.approx(0),
    )
    assert_stepped_conserved(ledger, [a, b])


def test_work_reported_before_the_counter_moves_waits_for_its_energy() -> None:
    """A coarse counter: the step's tokens arrive while the counter stands still; its energy shows in
    the next reading and is split by that work (3:1), not by the standing weights (1:1)."""
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 0}), (2, {"cpu:0": 8})])
    first = m.read()
    ledger = Ledger(first)
    ledger.begin("a", first, stepped=True)
    ledger.begin("b", first, stepped=True)
    ledger.work("a", 3, 0)
    ledger.work("b", 1, 0)
    ledger.observe(m.read())
    r = m.read()
    a, b = ledger.end("a", r), ledger.end("b", r)
    assert (a.joules, b.joules) == (pytest.approx(6), pytest.approx(2))
    assert_stepped_conserved(ledger, [a, b])


def test_a_request_that_joins_late_gets_none_of_the_held_energy_before_it() -> None:
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 10}), (2, {"cpu:0": 14})])
    first = m.read()
    ledger = Ledger(first)
    ledger.begin("a", first, stepped=True)
    ledger.begin("b", m.read(), stepped=True)  # 10 J held for a alone
    ledger.work("a", 1, 0)
    ledger.work("b", 1, 0)
    r = m.read()  # 4 J: 2 / 2; the 10 J before b began: all to a
    a, b = ledger.end("a", r), ledger.end("b", r)
    assert (a.joules, b.joules) == (pytest.approx(12), pytest.approx(2))
    assert_stepped_conserved(ledger, [a, b])


def test_work_rejects_negative_tokens_and_unstepped_requests_have_no_steps() -> None:
    m = ScriptedMeter([(0, {"cpu:0": 0}), (1, {"cpu:0": 4})])
    first = m.read()
    ledger = Ledger(first)
    ledger.begin("plain", first)
    with pytest.raises(ValueError):
        ledger.work("plain", -1, 0)
    a = ledger.end("plain", m.read())
    assert a.steps is None and a.joules == pytest.approx(4)


# Random engine schedules: two requests with the same prompt, one decoding more steps than the other.
@settings(max_examples=200, deadline=None)
@given(
    prompt=st.integers(1, 400),
    cached=st.integers(0, 400),
    steps=st.lists(
        st.tuples(
            st.floats(0.1, 50, allow_nan=False),  # J the step drew (readings 0.1 s apart: <= 500 W)
            st.integers(0, 3),  # readings with no report inside the step (sampler faster than steps)
        ),
        min_size=2,
        max_size=40,
    ),
    fewer=st.integers(0, 39),
    tail_j=st.floats(0, 5, allow_nan=False),
)
def test_more_generated_tokens_alongside_another_get_more_energy(
    prompt: int, cached: int, steps: list, fewer: int, tail_j: float
) -> None:
    """Both begin and end together with equal prompts; ``long`` decodes every step, ``short`` stops
    after ``fewer`` steps (as a paper answer of 5 tokens beside one of 128). Energy per step is drawn
    at random and may spill over several readings. ``long`` must get more, totals must conserve, and
    the decode energy must follow the decode steps."""
    n_short = fewer % (len(steps) - 1)  # at least one step decodes for `long` alone
    t_s, counter = 0.0, 0.0
    first = Reading(t_s, {"cpu:0": counter}, "rapl")
    ledger = Ledger(first)
    computed = max(prompt - min(cached, prompt), 1)
    ledger.begin("long", first, weight=prompt, stepped=True)
    ledger.begin("short", first, weight=prompt, stepped=True)
    for i, (joules, silent) in enumerate(steps):
        for part in range(silent + 1):  # the step's energy, read in silent + 1 readings
            t_s += 0.1
            counter += joules / (silent + 1)
            if part == silent:  # the engine's output for the step arrives with its last reading
                ledger.work("long", computed if i == 0 else 0, 0 if i == 0 else 1)
                if i == 0 or i <= n_short:
                    ledger.work("short", computed if i == 0 else 0, 0 if i == 0 else 1)
            ledger.observe(Reading(t_s, {"cpu:0": counter}, "rapl"))
        assert_stepped_conserved(ledger)
    t_s += 0.1
    counter += tail_j  # after the last output, before the requests end: no work reported
    end = Reading(t_s, {"cpu:0": counter}, "rapl")
    long, short = ledger.end("long", end), ledger.end("short", end)
    assert long.joules > short.joules
    assert long.steps is not None and short.steps is not None
    assert (long.steps.decode_tokens, short.steps.decode_tokens) == (len(steps) - 1, n_short)
    assert long.steps.prefill_j == pytest.approx(short.steps.prefill_j) == pytest.approx(steps[0][0] / 2)
    assert long.steps.unstepped_j == pytest.approx(short.steps.unstepped_j) == pytest.approx(tail_j / 2)
    assert long.joules + short.joules == pytest.approx(counter, rel=1e-9)  # nothing idle, nothing held
    assert_stepped_conserved(ledger, [long, short])


stepped_op_st = st.one_of(
    st.tuples(st.just("observe"), st.integers(0, 3)),
    st.tuples(st.just("begin"), st.integers(1, 8)),
    st.tuples(st.just("end"), st.integers(0, 7)),
    st.tuples(st.just("abandon"), st.integers(0, 7)),
    st.tuples(st.just("work"), st.integers(0, 7)),
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(stepped_op_st, st.floats(0, 20, allow_nan=False), st.integers(0, 5), st.integers(0, 64)),
        min_size=1,
        max_size=80,
    )
)
def test_random_stepped_schedules_conserve(steps: list) -> None:
    """Any interleaving of begins, ends, abandons, work reports and readings: metered = attributed +
    idle + held at every point (held 0 once no request is open), no share negative, each request's
    phases add up to its energy, and the metered total matches the counter this test drove."""
    t_s, counter = 0.0, 100.0
    ledger = Ledger(Reading(t_s, {"cpu:0": counter}, "rapl"))
    open_ids: list[str] = []
    allocs: list[Allocation] = []
    for n, ((op, arg), add_j, decode, prefill) in enumerate(steps):
        t_s += 0.1
        counter += add_j
        reading = Reading(t_s, {"cpu:0": counter}, "rapl")
        if op == "begin":
            open_ids.append(f"r{n}")
            ledger.begin(f"r{n}", reading, weight=float(arg), stepped=True)
        elif op in ("end", "abandon") and open_ids:
            rid = open_ids.pop(arg % len(open_ids))
            if op == "end":
                allocs.append(ledger.end(rid, reading))
            else:
                ledger.abandon(rid, reading)
        elif op == "work" and open_ids:
            ledger.work(open_ids[arg % len(open_ids)], prefill, decode)
        else:
            ledger.observe(reading)
        assert_stepped_conserved(ledger, allocs)
    ledger.observe(Reading(t_s + 0.01, {"cpu:0": counter}, "rapl"))  # work reports read no counter
    assert ledger.totals().metered_j.get("cpu:0", 0.0) == pytest.approx(counter - 100.0, abs=1e-9)
    assert_stepped_conserved(ledger, allocs)
