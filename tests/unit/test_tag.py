"""Energy tags: figures, uncertainty and flags from an allocation; no figure when there is none."""

from __future__ import annotations

import pytest

from serve_app.energy.base import MeterInfo
from serve_app.energy.ledger import Allocation
from serve_app.energy.tag import Overhead, add_overhead, make_tag, no_energy_tag

INFO = MeterInfo("rapl", ("cpu:package-0",), resolution_j=1e-6, update_period_s=0.001, node="head")


def _alloc(energy_j: dict[str, float], duration_s: float) -> Allocation:
    domains: dict[str, float] = {}
    for k, v in energy_j.items():
        domains[k.split(":", 1)[0]] = domains.get(k.split(":", 1)[0], 0.0) + v
    return Allocation("r1", 10.0, 10.0 + duration_s, energy_j, domains, 2.0, 3, 4)


def _share_info(
    devices: tuple[str, ...],
    max_power_w: dict[str, float],
    edge_error_j: float,
    source: str = "estimate",
    node: str = "vm",
    resolution_j: float = 1e-3,
    lag_s: float = 0.0,
) -> MeterInfo:
    """An extrapolating meter's info (a node account share: ``missed_j`` set), one-second ticks."""
    return MeterInfo(
        source,
        devices,
        resolution_j=resolution_j,
        update_period_s=1.0,
        node=node,
        lag_s=lag_s,
        edge_error_j=edge_error_j,
        missed_j=30.0,
        max_power_w=max_power_w,
    )


def test_tag_sums_counters_and_states_its_uncertainty() -> None:
    tag = make_tag(_alloc({"cpu:package-0": 2.0, "dram:package-0": 0.5}, 0.5), INFO, "texts", "rep")
    assert tag.joules == pytest.approx(2.5) and tag.measured and tag.source == "rapl"
    assert (
        tag.domains_j == {"cpu": 2.0, "dram": 0.5} and tag.nodes == ["head"] and tag.nodes_j == {"head": 2.5}
    )
    # resolution at both edges + average power (5 W) x update period (1 ms)
    assert tag.uncertainty_j == pytest.approx(2e-6 + 5.0 * 0.001)
    assert tag.flags == [] and tag.attribution is not None and tag.attribution.max_sharers == 4


def test_short_request_is_flagged_and_estimates_are_not_measurements() -> None:
    info = MeterInfo("estimate", (), resolution_j=0.3, update_period_s=0.01, node="head")
    tag = make_tag(_alloc({"cpu:process": 0.1}, 0.005), info, "time", "rep")
    assert not tag.measured
    assert set(tag.flags) == {"shorter_than_counter_update", "uncertainty_exceeds_value"}


def test_remote_counters_polling_lag_widens_only_a_late_tag() -> None:
    """A window whose ends waited for the other nodes' counters carries their update period only; one
    that did not also carries how stale a polled remote value can be (``MeterInfo.lag_s``)."""
    info = MeterInfo("estimate", (), resolution_j=0.0, update_period_s=1.0, node="head", lag_s=2.1)
    alloc = _alloc({"cpu:worker-1:process": 1.0, "cpu:process": 3.0}, 0.5)  # 8 W
    settled, late = make_tag(alloc, info, "texts", "rep"), make_tag(alloc, info, "texts", "rep", late=True)
    assert settled.uncertainty_j == pytest.approx(8.0 * 1.0) and "remote_counters_late" not in settled.flags
    assert late.uncertainty_j == pytest.approx(8.0 * 3.1) and "remote_counters_late" in late.flags


def test_an_extrapolating_meters_edge_error_bounds_a_tag_whatever_its_length() -> None:
    """An account share states how far a reading can be from its exact value (``edge_error_j``): a
    window is off by at most that at each end, so a short request at high power is no longer
    uncertain by a whole period of its power; a late remote counter still adds its lag."""
    info = MeterInfo(
        "estimate", (), resolution_j=1e-3, update_period_s=1.0, node="head", lag_s=2.0, edge_error_j=0.2
    )
    short = make_tag(_alloc({"cpu:process": 0.9}, 0.03), info, "texts", "rep")  # 30 W for 30 ms
    long = make_tag(_alloc({"cpu:process": 90.0}, 3.0), info, "texts", "rep")
    assert short.uncertainty_j == pytest.approx(long.uncertainty_j) == pytest.approx(2e-3 + 0.4)
    assert "uncertainty_exceeds_value" not in short.flags and "shorter_than_counter_update" in short.flags
    late = make_tag(_alloc({"cpu:process": 0.9}, 0.03), info, "texts", "rep", late=True)
    assert late.uncertainty_j == pytest.approx(2e-3 + 0.4 + 30.0 * 2.0)


def test_a_tags_uncertainty_is_never_wider_than_what_its_devices_can_draw() -> None:
    """A 6 ms request on a node account share (75 W: a 65 W CPU estimate and 9.5 W of DRAM) whose
    share missed 4.6 J over its last one-second tick said ± 9.2 J (the demo's median for bow-logreg),
    20x what the node can draw in 6 ms. Both the figure and the energy it stands for lie between 0
    and the devices' most over the window, so that is the widest the uncertainty can be; a long window
    keeps its own bound, and a counter without a stated limit counts at its domain's bound."""
    share = _share_info(
        ("cpu:node", "dram:node", "cpu-process:4242"), {"cpu:node": 65.0, "dram:node": 9.5}, edge_error_j=4.6
    )
    short = make_tag(_alloc({"cpu:node": 0.19, "dram:node": 0.005}, 0.006), share, "texts", "rep")
    assert short.uncertainty_j == pytest.approx(2e-3 + 74.5 * 0.006)
    assert "uncertainty_exceeds_value" in short.flags  # 0.449 J of 0.195 J: still loose, now possible
    long = make_tag(_alloc({"cpu:node": 60.0, "dram:node": 2.0}, 2.0), share, "texts", "rep")
    assert long.uncertainty_j == pytest.approx(2e-3 + 9.2)  # 74.5 W x 2 s is more: its own bound holds
    # two nodes, each a share: the window plus how stale the other node's values can be
    spanning = _share_info(
        ("head/cpu:node", "worker-1/cpu:node"),
        {"cpu:head:node": 65.0, "cpu:worker-1:node": 65.0},
        node="head",
        lag_s=2.1,
        edge_error_j=200.0,
    )
    pp = make_tag(_alloc({"cpu:head:node": 0.4, "cpu:worker-1:node": 0.2}, 0.012), spanning, "tokens", "rep")
    assert pp.uncertainty_j == pytest.approx(2e-3 + 130.0 * (0.012 + 2.1))
    # RAPL states the package's limit, not DRAM's: DRAM counts at the domain's 300 W
    rapl = _share_info(
        ("cpu:package-0", "dram:package-0"),
        {"cpu:package-0": 95.0},
        source="rapl",
        resolution_j=1e-6,
        edge_error_j=40.0,
    )
    tag = make_tag(_alloc({"cpu:package-0": 0.5}, 0.01), rapl, "texts", "rep")
    assert tag.uncertainty_j == pytest.approx(2e-6 + (95.0 + 300.0) * 0.01)


def test_a_busy_stretchs_bound_keeps_its_edges_when_each_short_tag_is_capped() -> None:
    """Thirty back-to-back 6 ms requests in one busy stretch on that share: each tag is capped at what
    the node can draw in 6 ms (0.449 J), but the stretch's two ends can shift by the share's edge
    bound (9.2 J), and the run's figure must keep it: one stretch x the largest capped tag would say
    0.449 J for the whole run."""
    from dataclasses import replace

    from serve_app.replay.summary import run_uncertainty_j

    share = _share_info(("cpu:node", "dram:node"), {"cpu:node": 65.0, "dram:node": 9.5}, edge_error_j=4.6)
    tags = [
        make_tag(replace(_alloc({"cpu:node": 0.2}, 0.006), opened_stretch=i == 0), share, "texts", "rep")
        for i in range(30)
    ]
    assert {round(t.uncertainty_j or 0.0, 6) for t in tags} == {round(2e-3 + 74.5 * 0.006, 6)}
    assert run_uncertainty_j(tags, complete=True) == pytest.approx(2e-3 + 9.2)


def test_what_the_meter_adjusted_in_a_window_adds_to_its_uncertainty() -> None:
    """Energy a share released or held back inside the window (``Allocation.adjusted_j``) is energy
    the window shows but did not draw, or drew and does not show: it adds to the edge bound."""
    info = MeterInfo("estimate", (), resolution_j=1e-3, update_period_s=1.0, node="head", edge_error_j=0.2)
    plain = _alloc({"cpu:process": 0.9}, 0.03)
    moved = Allocation(**{**plain.__dict__, "adjusted_j": 0.35})
    assert make_tag(plain, info, "texts", "rep").uncertainty_j == pytest.approx(2e-3 + 0.4)
    assert make_tag(moved, info, "texts", "rep").uncertainty_j == pytest.approx(2e-3 + 0.4 + 0.35)


def test_the_serving_overheads_uncertainty_adds_to_the_end_to_end_tag() -> None:
    info = MeterInfo("estimate", (), resolution_j=0.0, update_period_s=1.0, node="head", edge_error_j=0.2)
    tag = make_tag(_alloc({"cpu:process": 0.3}, 0.03), info, "texts", "rep")
    assert tag.uncertainty_j == pytest.approx(0.4) and "uncertainty_exceeds_value" in tag.flags
    both = add_overhead(tag, Overhead(0.5, {"cpu": 0.5}, "estimate", "head", uncertainty_j=0.3))
    assert both.joules == pytest.approx(0.8) and both.uncertainty_j == pytest.approx(0.7)
    assert "uncertainty_exceeds_value" not in both.flags  # 0.7 J of 0.8 J end to end
    # it began a busy stretch in the router's ledger, not in its replica's (another request was open)
    opened = add_overhead(tag, Overhead(0.5, {"cpu": 0.5}, "estimate", "head", stretch_starts=1))
    assert tag.attribution is not None and tag.attribution.stretch_starts == 0
    assert opened.attribution is not None and opened.attribution.stretch_starts == 1
    worse = add_overhead(tag, Overhead(0.5, {"cpu": 0.5}, "estimate", "head", uncertainty_j=0.6))
    assert worse.uncertainty_j == pytest.approx(1.0) and worse.flags.count("uncertainty_exceeds_value") == 1


def test_per_node_energy_from_node_qualified_counters() -> None:
    tag = make_tag(_alloc({"cpu:worker-1:process": 1.0, "cpu:process": 3.0}, 1.0), INFO, "texts", "rep")
    assert tag.nodes == ["head", "worker-1"] and tag.nodes_j == {"head": 3.0, "worker-1": 1.0}


@pytest.mark.parametrize("source", ["unavailable", "off"])
def test_no_energy_tag_has_no_figure(source: str) -> None:
    tag = no_energy_tag("rep", INFO, "energy_uj vanished", source=source)
    assert tag.joules is None and tag.uncertainty_j is None and not tag.measured and tag.source == source
    assert tag.domains_j == {} and tag.nodes_j == {}


def test_stepped_request_tag_shows_its_tokens_and_phase_energy() -> None:
    from dataclasses import replace

    from serve_app.energy.ledger import StepShare

    steps = StepShare(prefill_tokens=80, decode_tokens=30, prefill_j=1.0, decode_j=1.25, unstepped_j=0.25)
    tag = make_tag(
        replace(_alloc({"cpu:package-0": 2.5}, 1.0), steps=steps), INFO, "tokens", "rep", (120, 32)
    )
    assert tag.attribution is not None and tag.attribution.tokens is not None
    assert tag.attribution.tokens.model_dump() == {
        "prompt_tokens": 120,
        "generated_tokens": 32,
        "prefill_tokens": 80,
        "decode_tokens": 30,
        "prefill_j": 1.0,
        "decode_j": 1.25,
        "unstepped_j": 0.25,
    }
    plain = make_tag(_alloc({"cpu:package-0": 2.5}, 1.0), INFO, "tokens", "rep", (120, 32))
    assert plain.attribution is not None and plain.attribution.tokens is None  # not stepped: no split
