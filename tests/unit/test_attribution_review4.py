"""Review 4 of per-request attribution: the end-to-end tag on a GPU node, a router meter outage, and a
restart the meter reports. Figures are checked against the joules each test feeds or writes. Units: J, s."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.account import share_source
from serve_app.energy.base import MeterInfo, Reading
from serve_app.energy.counters import MAX_POWER_W, Limits, counter_step
from serve_app.energy.ledger import Ledger
from serve_app.energy.overhead import ServingOverhead
from serve_app.energy.rapl import RaplMeter, rapl_available
from serve_app.energy.tag import Overhead, add_overhead, make_tag
from serve_app.energy.window import ReplicaEnergy

pytestmark = pytest.mark.unit

GPU, CPU, DRAM = "gpu:0", "cpu:package-0", "dram:package-0"


def test_a_gpu_replicas_tag_adds_the_overhead_the_nodes_rapl_counters_metered() -> None:
    """On a GPU node with RAPL the replica's share (its GPU plus the node's CPU and DRAM) is labelled
    ``nvml`` and the router's (CPU and DRAM only) ``rapl``: both measured. The overhead was dropped for
    the differing label and every GPU answer said ``overhead_not_metered``, its joules the model's alone."""
    replica_source = share_source({GPU: "nvml", CPU: "rapl", DRAM: "rapl"})
    router_source = share_source({CPU: "rapl", DRAM: "rapl"})
    assert (replica_source, router_source) == ("nvml", "rapl")
    ledger = Ledger(Reading(0.0, {GPU: 0.0, CPU: 0.0}, replica_source))
    ledger.begin("r", Reading(0.0, {GPU: 0.0, CPU: 0.0}, replica_source))
    alloc = ledger.end("r", Reading(1.0, {GPU: 200.0, CPU: 50.0}, replica_source))
    info = MeterInfo(replica_source, (GPU, CPU), resolution_j=1e-3, update_period_s=0.1, node="n1")
    tag = make_tag(alloc, info, "texts", "rep")
    both = add_overhead(tag, Overhead(30.0, {"cpu": 25.0, "dram": 5.0}, router_source, "n1", (), 0.5))
    assert both.joules == pytest.approx(200.0 + 50.0 + 30.0)
    assert both.model_j == pytest.approx(250.0) and both.overhead_j == pytest.approx(30.0)
    assert both.scope == "model+serving" and "overhead_not_metered" not in both.flags
    assert both.domains_j == pytest.approx({"gpu": 200.0, "cpu": 75.0, "dram": 5.0})
    assert both.source == "nvml" and both.measured
    # an estimated overhead is still never added to a measured figure
    est = add_overhead(tag, Overhead(30.0, {"cpu": 30.0}, "estimate", "n1", (), 0.5))
    assert est.joules == pytest.approx(250.0) and "overhead_not_metered" in est.flags


def test_a_router_meter_outage_during_a_request_is_flagged_on_its_end_to_end_tag(tmp_path: Path) -> None:
    """The router's counter fails mid-request and is back before it ends: the overhead holds only what
    was metered around the outage. The router's tag said ``meter_gap`` but the overhead kept only its
    ``counter_*`` flags, so the answer passed 0.1 J off as the whole overhead."""
    rapl_available.cache_clear()
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text(f"{10**12}\n")
    uj = 5_000_000

    def add(joules: float) -> None:
        nonlocal uj
        uj += round(joules * 1e6)
        (zone / "energy_uj").write_text(f"{uj}\n")

    add(0.0)
    cfg = EnergyConfig.model_validate({"meter": "rapl", "sample_period_s": 10, "rapl_root": str(tmp_path)})
    overhead = ServingOverhead(cfg, "n1", None, single_hop=True)  # starts nothing of its own
    overhead.energy = ReplicaEnergy(RaplMeter(str(tmp_path), node="n1"), overhead.cfg, "router", [])
    try:
        window = overhead.begin()
        add(0.1)
        overhead.energy.snapshot()  # a read: the 0.1 J are metered
        (zone / "energy_uj").unlink()  # the driver went away
        assert overhead.energy.open("probe", 1.0).close().source == "unavailable"
        add(50.0)  # drawn while unreadable; readable again from here
        share = overhead.end(window)
    finally:
        overhead.energy.close()
    assert share is not None and share.joules == pytest.approx(0.1)
    ledger = Ledger(Reading(0.0, {CPU: 0.0}, "rapl"))
    ledger.begin("r", Reading(0.0, {CPU: 0.0}, "rapl"))
    model = make_tag(
        ledger.end("r", Reading(1.0, {CPU: 2.0}, "rapl")),
        MeterInfo("rapl", (CPU,), resolution_j=1e-6, update_period_s=0.001, node="n1"),
        "texts",
        "rep",
    )
    tag = add_overhead(model, share)
    assert tag.joules == pytest.approx(2.1) and tag.overhead_j == pytest.approx(0.1)
    assert "overhead_meter_gap" in tag.flags and "meter_gap" not in tag.flags  # the model's window had none


def test_a_reported_restart_showing_more_than_the_hardware_could_draw_is_dropped() -> None:
    """A counter the meter says restarted (``Reading.reset_keys``) can show no more than the device drew
    since, within the interval. One showing 5 MJ one second later was taken whole: a 2.5 MW tag on one GPU."""
    limits = Limits()
    bound = limits.bound_j(GPU, 1.0)
    assert counter_step(GPU, 1_000.0, 900.0, 1.0, limits, True) == (900.0, "reset")  # a plausible restart
    delta, kind = counter_step(GPU, 1_000.0, 5e6, 1.0, limits, True)
    assert delta <= bound and kind == "dropped"
    ledger = Ledger(Reading(0.0, {GPU: 1_000.0}, "nvml"))
    ledger.begin("r", Reading(0.0, {GPU: 1_000.0}, "nvml"))
    ledger.observe(Reading(1.0, {GPU: 5e6}, "nvml", reset_keys=frozenset({GPU})))
    alloc = ledger.end("r", Reading(2.0, {GPU: 5e6 + 100.0}, "nvml"))
    assert alloc.joules == pytest.approx(100.0)  # the step after it, from the new value
    assert alloc.joules <= MAX_POWER_W["gpu"] * alloc.duration_s
    assert "counter_above_bound" in alloc.flags
    totals = ledger.totals()
    assert totals.dropped == 1 and totals.dropped_j == pytest.approx(5e6)
    # a restart to a value below the one before: what it claimed is still the new value, never negative
    ledger.observe(Reading(3.0, {GPU: 4e6}, "nvml", reset_keys=frozenset({GPU})))
    assert ledger.totals().dropped_j == pytest.approx(5e6 + 4e6)


def test_a_held_interval_waits_for_its_own_sharers_work_not_another_requests() -> None:
    """A and C decode together (100 J held for them); B joins and reports its prefill first. B's report
    split A and C's interval by standing weight, 50 J each, though neither had reported nor ended; A's
    step output then came in, and C reported nothing. Their interval waits for their own work: all of
    it to A, as its decode."""
    ledger = Ledger(Reading(0.0, {GPU: 0.0}, "nvml"))
    ledger.begin("A", Reading(0.0, {GPU: 0.0}, "nvml"), weight=1.0, stepped=True)
    ledger.begin("C", Reading(0.0, {GPU: 0.0}, "nvml"), weight=1.0, stepped=True)
    ledger.observe(Reading(1.0, {GPU: 100.0}, "nvml"))  # A and C's step: 100 J, no output yet
    ledger.begin("B", Reading(1.0, {GPU: 100.0}, "nvml"), weight=1.0, stepped=True)
    ledger.work("B", 5, 0)
    ledger.observe(Reading(1.05, {GPU: 110.0}, "nvml"))  # 10 J with B's prefill reported
    ledger.work("A", 0, 1)  # A's step output arrives
    a = ledger.end("A", Reading(1.1, {GPU: 110.0}, "nvml"))
    c = ledger.end("C", Reading(1.1, {GPU: 110.0}, "nvml"))
    b = ledger.end("B", Reading(1.1, {GPU: 110.0}, "nvml"))
    assert a.steps is not None and c.steps is not None
    assert a.joules == pytest.approx(100.0) and a.steps.decode_j == pytest.approx(100.0)
    assert a.steps.unstepped_j == pytest.approx(0.0)
    assert c.joules == pytest.approx(0.0) and b.joules == pytest.approx(10.0)
    t = ledger.totals()
    assert sum(t.held_j.values()) == pytest.approx(0.0) and t.attributed_j[GPU] == pytest.approx(110.0)


def test_a_request_not_stepped_keeps_its_weights_share_beside_a_stepped_one() -> None:
    """A classifier request (weight 1) shares two seconds of the device with an LLM request (weight 1,
    stepped) that reports its tokens: the unstepped request got 0 J of the 200 J, the LLM all of it."""
    ledger = Ledger(Reading(0.0, {GPU: 0.0}, "nvml"))
    ledger.begin("llm", Reading(0.0, {GPU: 0.0}, "nvml"), weight=1.0, stepped=True)
    ledger.begin("plain", Reading(0.0, {GPU: 0.0}, "nvml"), weight=1.0)
    ledger.observe(Reading(1.0, {GPU: 100.0}, "nvml"))
    ledger.work("llm", 10, 0)
    ledger.work("plain", 7, 0)  # a report for a request not stepped counts for nothing
    ledger.observe(Reading(2.0, {GPU: 200.0}, "nvml"))
    plain = ledger.end("plain", Reading(2.0, {GPU: 200.0}, "nvml"))
    llm = ledger.end("llm", Reading(2.0, {GPU: 200.0}, "nvml"))
    assert plain.joules == pytest.approx(100.0) and plain.steps is None
    assert llm.joules == pytest.approx(100.0)
    assert llm.steps is not None and llm.steps.prefill_j == pytest.approx(100.0)


class _ScriptedGpu:
    """A GPU counter's readings in a fixed order, each naming the restarts its driver reported: the
    sensor (NVML after a driver reload) this machine does not have. Units: J, s."""

    def __init__(self, readings: list[tuple[float, frozenset[str]]]) -> None:
        self._readings = iter(readings)
        self._t = 0.0
        self._info = MeterInfo(source="nvml", devices=(GPU,), resolution_j=0.001, update_period_s=0.1)

    @property
    def info(self) -> MeterInfo:
        return self._info

    def read(self) -> Reading:
        value, resets = next(self._readings)
        self._t += 1.0
        return Reading(self._t, {GPU: value}, "nvml", reset_keys=resets)

    def close(self) -> None:
        pass


def test_the_node_account_counts_what_a_dropped_restart_claimed_never_a_negative() -> None:
    """The node account drops a restart its meter reports above the physical bound, as the ledger does,
    and counts what it claimed (the new value), not the step from the old one (negative when the new
    value is lower)."""
    from serve_app.energy.account import NodeAccount

    restart = frozenset({GPU})
    meter = _ScriptedGpu([(1_000.0, frozenset()), (5e6, restart), (4e6, restart), (4e6 + 50.0, frozenset())])
    account = NodeAccount([meter], "n1", idle_w={"gpu": 0})
    for _ in range(3):
        account.tick()
    snap = account.snapshot()
    assert snap["steps"]["dropped"] == 2 and snap["dropped_j"] == pytest.approx(5e6 + 4e6)
    assert snap["metered_by_counter_j"][GPU] == pytest.approx(50.0)  # only the step after them


def test_a_window_shorter_than_its_counters_update_is_bounded_by_what_the_device_can_draw() -> None:
    """An NVML counter that refreshes every 0.1 s, the GPU at 300 W: a 30 ms request between two updates
    sees 0 J though it drew about 9 J. Its ± was twice the resolution (0.002 J), from the window's own
    average power (0 W); such a window's power is unknown, so its edges are bounded by the device's most."""
    info = MeterInfo(
        source="nvml",
        devices=(f"{GPU}=GPU-aaaa",),
        resolution_j=0.001,
        update_period_s=0.1,
        max_power_w={GPU: 700.0},
    )
    ledger = Ledger(Reading(0.0, {GPU: 1_000.0}, "nvml"))
    ledger.begin("short", Reading(0.0, {GPU: 1_000.0}, "nvml"))
    short = make_tag(ledger.end("short", Reading(0.03, {GPU: 1_000.0}, "nvml")), info, "texts", "rep")
    assert short.joules == 0.0 and short.uncertainty_j >= 300.0 * 0.03
    assert "shorter_than_counter_update" in short.flags and "uncertainty_exceeds_value" in short.flags
    # a window longer than the update keeps its own average power's bound: 300 W x 0.1 s, both edges' share
    ledger.begin("long", Reading(1.0, {GPU: 1_000.0}, "nvml"))
    long = make_tag(ledger.end("long", Reading(1.5, {GPU: 1_150.0}, "nvml")), info, "texts", "rep")
    assert long.joules == pytest.approx(150.0) and long.uncertainty_j == pytest.approx(30.0 + 0.002)
