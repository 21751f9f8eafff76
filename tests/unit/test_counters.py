"""Counters that cannot lie: resets only near zero, reorderings give 0 J, steps above the physical
bound are dropped, and no tag exceeds what the hardware could draw. Units: J, s, W."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import MeterInfo, Reading
from serve_app.energy.counters import MAX_POWER_W, Limits, counter_step
from serve_app.energy.ledger import Ledger
from serve_app.energy.procset import ProcessSetMeter
from serve_app.energy.sampler import meter_limits
from serve_app.energy.tag import make_tag

pytestmark = pytest.mark.unit

GPU = "gpu:worker-1:0"  # a remote NVML counter as a MultiNodeMeter names it
REMOTE_SLACK_S = 2.2  # poll period + RPC timeout + NVML update period: the staleness of a remote value
INFO = MeterInfo(
    source="nvml", devices=("worker-1/gpu:0",), resolution_j=1e-3, update_period_s=REMOTE_SLACK_S
)


def _ledger(first: Reading) -> Ledger:
    return Ledger(first, meter_limits(INFO.update_period_s, INFO.resolution_j))


def test_five_megajoule_reordered_read_is_not_a_reset() -> None:
    """A remote NVML counter steps back 50 J from 5,000,200 J: a reordering (0 J), not a lifetime."""
    ledger = _ledger(Reading(0.0, {GPU: 5_000_000.0}, "nvml"))
    ledger.begin("r", Reading(1.0, {GPU: 5_000_200.0}, "nvml"))
    ledger.observe(Reading(1.01, {GPU: 5_000_150.0}, "nvml"))  # a stale value merged later
    alloc = ledger.end("r", Reading(1.5, {GPU: 5_000_250.0}, "nvml"))
    assert alloc.joules == pytest.approx(50.0)  # 5,000,200 -> 5,000,250, counted once
    tag = make_tag(alloc, INFO, "texts", "replica-1")
    assert tag.joules == pytest.approx(50.0) and "counter_reordered" in tag.flags
    t = ledger.totals()
    assert (t.resets, t.reorders, t.dropped) == (0, 1, 0)
    assert t.metered_j[GPU] == pytest.approx(250.0)


def test_restart_near_zero_is_a_reset_and_driver_reset_is_believed() -> None:
    ledger = _ledger(Reading(0.0, {"gpu:0": 5_000_000.0}, "nvml"))
    ledger.begin("r", Reading(1.0, {"gpu:0": 5_000_100.0}, "nvml"))
    ledger.observe(Reading(2.0, {"gpu:0": 40.0}, "nvml"))  # driver reload: restarted from 0
    # the driver says gpu:0 restarted: 900 J is below the bound for 1 s, taken whole
    ledger.observe(Reading(3.0, {"gpu:0": 900.0}, "nvml", reset_keys=frozenset({"gpu:0"})))
    alloc = ledger.end("r", Reading(4.0, {"gpu:0": 1000.0}, "nvml"))
    assert alloc.joules == pytest.approx(40 + 900 + 100)
    assert "counter_reset" in alloc.flags and ledger.totals().resets == 2


def test_step_above_physical_bound_is_dropped_counted_and_flagged() -> None:
    ledger = _ledger(Reading(0.0, {"cpu:package-0": 100.0}, "rapl"))
    ledger.begin("r", Reading(1.0, {"cpu:package-0": 150.0}, "rapl"))
    ledger.observe(Reading(1.01, {"cpu:package-0": 5_000_150.0}, "rapl"))  # a corrupt read
    alloc = ledger.end("r", Reading(2.0, {"cpu:package-0": 5_000_200.0}, "rapl"))
    assert alloc.joules == pytest.approx(50.0)
    assert "counter_above_bound" in alloc.flags
    t = ledger.totals()
    assert t.dropped == 1 and t.dropped_j == pytest.approx(5_000_000.0)
    assert t.metered_j["cpu:package-0"] == pytest.approx(100.0)


def test_a_negative_reading_is_no_reset() -> None:
    """Found by the property test below: a counter read below zero (a corrupt value) once counted as a
    reset, and a reset charges the new value, so a request got -50 J. No counter counts below zero."""
    ledger = _ledger(Reading(0.0, {GPU: 0.0}, "nvml"))
    ledger.begin("r", Reading(0.0, {GPU: 0.0}, "nvml"))
    ledger.observe(Reading(0.0, {GPU: -50.0}, "nvml"))
    ledger.observe(Reading(0.0, {GPU: 5e6}, "nvml"))  # then a corrupt jump: dropped
    alloc = ledger.end("r", Reading(0.0, {GPU: 0.0}, "nvml"))
    assert alloc.joules == 0.0 and "counter_reordered" in alloc.flags


def test_bound_formula() -> None:
    lim = Limits(slack_s=0.1, slack_j=0.002)
    assert lim.bound_j("gpu:0", 1.0) == pytest.approx(MAX_POWER_W["gpu"] * 1.1 + 0.002)
    assert counter_step("gpu:0", 0.0, lim.bound_j("gpu:0", 1.0), 1.0, lim) == (pytest.approx(1650.002), "ok")
    assert counter_step("gpu:0", 0.0, lim.bound_j("gpu:0", 1.0) + 1, 1.0, lim)[1] == "dropped"
    assert counter_step("x:0", 0.0, 1e12, 0.0, lim) == (1e12, "ok")  # unknown domain: unbounded


step_st = st.tuples(
    st.floats(0.0, 0.5),  # seconds to the next reading
    st.floats(0.0, 400.0),  # J the hardware really drew in that interval
    st.sampled_from(["ok", "ok", "ok", "back", "glitch", "restart"]),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step_st, min_size=2, max_size=40), start_j=st.floats(0, 1e7))
def test_no_tag_above_the_physical_bound(steps: list, start_j: float) -> None:
    """Whatever the counter does (stale values, corrupt jumps, restarts), no request's figure exceeds
    max power x its window plus one slack per interval."""
    limits = meter_limits(INFO.update_period_s, INFO.resolution_j)
    t, true_j = 0.0, start_j
    ledger = _ledger(Reading(t, {GPU: true_j}, "nvml"))
    ledger.begin("r", Reading(t, {GPU: true_j}, "nvml"))
    intervals = 0
    for dt, drawn, kind in steps:
        t += dt
        true_j += min(drawn, MAX_POWER_W["gpu"] * dt)
        shown = {"ok": true_j, "back": true_j - 50.0, "glitch": true_j + 5e6, "restart": drawn}[kind]
        if kind == "restart":
            true_j = drawn
        ledger.observe(Reading(t, {GPU: shown}, "nvml"))
        intervals += 1
    alloc = ledger.end("r", Reading(t, {GPU: true_j}, "nvml"))
    bound = MAX_POWER_W["gpu"] * (t + intervals * limits.slack_s) + intervals * limits.slack_j
    assert 0.0 <= alloc.joules <= bound + 1e-6


def test_process_set_meter_reads_are_serialised() -> None:
    """Concurrent readers: ordered by time, readings never step back (each read and its stamp are
    taken under one lock)."""
    meter = ProcessSetMeter(EnergyConfig(meter="estimate"), [os.getpid()])
    out: list[Reading] = []
    lock = threading.Lock()

    def reader() -> None:
        for _ in range(200):
            r = meter.read()
            sum(i * i for i in range(200))  # burn some CPU between reads
            with lock:
                out.append(r)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ordered = sorted(out, key=lambda r: r.t_s)
    for a, b in zip(ordered, ordered[1:], strict=False):
        for k in a.energy_j:
            assert b.energy_j[k] >= a.energy_j[k] - 1e-12, (k, a, b)
