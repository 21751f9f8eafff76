"""The replica's energy interface without Ray or Serve: windows on a RAPL meter over a powercap tree
the test writes. Every expected figure comes from the joules the test wrote, not from the ledger.
Units: the files hold µJ, figures are J."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.rapl import RaplMeter, rapl_available
from serve_app.energy.sampler import COARSE_PERIOD_S
from serve_app.energy.window import ReplicaEnergy

pytestmark = pytest.mark.unit


class Package:
    """One RAPL package zone whose counter the test advances."""

    def __init__(self, root: Path) -> None:
        self.zone = root / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text(f"{10**12}\n")
        self.uj = 5_000_000
        self.write()

    def write(self) -> None:
        (self.zone / "energy_uj").write_text(f"{self.uj}\n")

    def add(self, joules: float) -> None:
        self.uj += round(joules * 1e6)
        self.write()


@pytest.fixture()
def package(tmp_path: Path) -> Package:
    rapl_available.cache_clear()
    return Package(tmp_path)


def energy_on(root: Path, **cfg: object) -> ReplicaEnergy:
    # A 10 s sampler: no reading but the windows' own inside the test.
    config = EnergyConfig.model_validate(
        {"meter": "rapl", "sample_period_s": 10, "rapl_root": str(root), **cfg}
    )
    return ReplicaEnergy(RaplMeter(str(root), node="n1"), config, "replica-1", ["example_flag"])


def test_overlapping_windows_share_what_the_counter_moved(tmp_path: Path, package: Package) -> None:
    energy = energy_on(tmp_path, attribution="texts")
    try:
        package.add(0.25)  # before any request: idle
        a = energy.open("same-id", weight=1.0)
        package.add(0.3)  # a alone
        b = energy.open("same-id", weight=3.0)  # the client reused its id: still two windows
        package.add(0.8)  # a and b, 1:3
        tag_a = a.close()
        package.add(0.1)  # b alone
        tag_b = b.close()
        package.add(0.05)  # idle again
        snap = energy.snapshot()
    finally:
        energy.close()
    assert tag_a.joules == pytest.approx(0.3 + 0.8 / 4)
    assert tag_b.joules == pytest.approx(0.8 * 3 / 4 + 0.1)
    assert tag_a.source == tag_b.source == "rapl" and tag_a.measured
    assert "example_flag" in tag_a.flags and tag_a.attribution and tag_a.attribution.max_sharers == 2
    assert snap["requests"] == 2 and snap["open_requests"] == 0
    # Counted up to the snapshot, which reads the counter itself: the final 0.05 J is idle too.
    assert snap["metered_j"] == pytest.approx(0.25 + 0.3 + 0.8 + 0.1 + 0.05)
    assert snap["idle_j"] == pytest.approx(0.25 + 0.05)


def test_abandoned_window_keeps_what_it_used_attributed(tmp_path: Path, package: Package) -> None:
    energy = energy_on(tmp_path)
    try:
        w = energy.open("r", weight=1.0)
        package.add(0.4)
        w.abandon()
        snap = energy.snapshot()
    finally:
        energy.close()
    assert snap["attributed_j"] == pytest.approx(0.4) and snap["idle_j"] == 0
    assert snap["requests"] == 1 and snap["open_requests"] == 0


def test_meter_failure_gives_unavailable_tags_then_recovers(tmp_path: Path, package: Package) -> None:
    energy = energy_on(tmp_path)
    try:
        (package.zone / "energy_uj").unlink()  # the driver went away
        tag = energy.open("r1", 1.0).close()
        assert tag.joules is None and tag.source == "unavailable" and not tag.measured
        assert energy.snapshot()["source"] == "unavailable"
        package.add(50.0)  # the gap's energy is unknown: it must not land on the next request
        w = energy.open("r2", 1.0)
        package.add(0.2)
        tag = w.close()
        assert tag.joules == pytest.approx(0.2) and energy.error is None
    finally:
        energy.close()


def test_a_window_open_across_a_meter_outage_is_flagged_meter_gap(tmp_path: Path, package: Package) -> None:
    """The counter fails mid-request and is back when it closes: the figure holds only what was
    metered around the outage (the outage's energy is unknown), so the tag must say so, not pass it off
    as the request's whole energy."""
    energy = energy_on(tmp_path)
    try:
        w = energy.open("r1", 1.0)
        package.add(0.1)
        energy.snapshot()  # a read: the 0.1 J are metered
        (package.zone / "energy_uj").unlink()  # the driver went away
        assert energy.open("r2", 1.0).close().source == "unavailable"  # a read saw the outage
        package.add(50.0)  # drawn while unreadable; the counter is back from here
        tag = w.close()
        later = energy.open("r3", 1.0)
        package.add(0.3)
        after = later.close()
    finally:
        energy.close()
    assert tag.joules == pytest.approx(0.1) and tag.source == "rapl"
    assert "meter_gap" in tag.flags
    assert after.joules == pytest.approx(0.3) and "meter_gap" not in after.flags


def test_metering_off_says_so(tmp_path: Path, package: Package) -> None:
    energy = energy_on(tmp_path, meter="off")
    try:
        w = energy.open("r", 1.0)
        package.add(1.0)
        tag = w.close()
    finally:
        energy.close()
    assert tag.joules is None and tag.source == "off" and not w.stepped


def test_stepped_window_takes_engine_work(tmp_path: Path, package: Package) -> None:
    """Two LLM requests with equal prompts, one decoding three steps to the other's one: the energy
    the counter moved while they ran goes 13:11 by the tokens reported (no reading in between)."""
    energy = energy_on(tmp_path, attribution="tokens")
    try:
        long, short = energy.open("long", 10.0, stepped=True), energy.open("short", 10.0, stepped=True)
        long.work(10, 3)
        short.work(10, 1)
        time.sleep(0.01)  # 1.2 J within 0.2 ms would be over the 1000 W a package can draw: dropped, rightly
        package.add(1.2)
        tag_long, tag_short = long.close((10, 3)), short.close((10, 1))
    finally:
        energy.close()
    assert tag_long.joules == pytest.approx(1.2 * 13 / 24) and tag_short.joules == pytest.approx(
        1.2 * 11 / 24
    )
    tokens = tag_long.attribution.tokens if tag_long.attribution else None
    assert tokens is not None and (tokens.prefill_tokens, tokens.decode_tokens) == (10, 3)
    assert tokens.prefill_j == pytest.approx(1.2 * 10 / 24) and tokens.decode_j == pytest.approx(1.2 * 3 / 24)


def readings_over(energy: ReplicaEnergy, seconds: float) -> int:
    """Readings the ledger took in ``seconds`` (the ledger's own count: no read of ours in between)."""
    before = energy.sampler.ledger.totals().readings
    time.sleep(seconds)
    return energy.sampler.ledger.totals().readings - before


def test_the_sampler_reads_at_its_period_only_while_a_stepped_request_is_open(
    tmp_path: Path, package: Package
) -> None:
    """A 10 ms sampler: idle, or with a request of fixed weight open, it reads at most once a second
    (``COARSE_PERIOD_S``: the window's own reads bound that request); a stepped window opening wakes it
    to 10 ms at once, and it backs off again once that window closes."""
    energy = energy_on(tmp_path, sample_period_s=0.01, attribution="tokens")
    try:
        time.sleep(0.2)  # past the thread's start
        idle = readings_over(energy, 0.6)
        fixed = energy.open("fixed", 1.0, stepped=False)
        with_fixed = readings_over(energy, 0.6)
        stepped = energy.open("stepped", 1.0, stepped=True)
        with_stepped = readings_over(energy, 0.6)
        stepped.close((1, 1))
        time.sleep(0.05)  # the thread's current period ends
        after = readings_over(energy, 0.6)
        fixed.close((1, 1))
    finally:
        energy.close()
    assert COARSE_PERIOD_S >= 1.0
    assert idle <= 1 and with_fixed <= 1 and after <= 1, (idle, with_fixed, after)
    assert with_stepped >= 20, with_stepped  # 60 periods of 10 ms; a loaded test machine stretches them


def test_totals_include_energy_up_to_now_while_the_sampler_idles(tmp_path: Path, package: Package) -> None:
    energy = energy_on(tmp_path, sample_period_s=0.01)
    try:
        time.sleep(0.1)
        package.add(2.5)  # idle: no sampler read follows for up to a second
        t = energy.totals()
    finally:
        energy.close()
    assert sum(t.metered_j.values()) == pytest.approx(2.5) and sum(t.idle_j.values()) == pytest.approx(2.5)
