"""RaplMeter against a scripted powercap sysfs tree (the vendor boundary), including wrap-around
and unreadable files. Units: files hold µJ, the meter reports J."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.energy.base import MeterError, MeterInfo
from serve_app.energy.counters import Limits
from serve_app.energy.ledger import Ledger
from serve_app.energy.rapl import RaplMeter, rapl_available

pytestmark = pytest.mark.unit

MAX_UJ = 1_000_000_000  # 1000 J counter range, small enough to wrap in a test


FAST_UW = 10**15  # 1 GW: a scripted counter's steps come microseconds apart, faster than any package


def make_zone(
    root: Path, dirname: str, name: str, energy_uj: int = 0, max_uj: int = MAX_UJ, max_power_uw: int = 0
) -> Path:
    """A powercap zone; ``max_power_uw`` > 0 writes its ``constraint_0_max_power_uw``: the most power
    the meter takes a step (and so a wrap) to be able to come from."""
    zone = root / dirname
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{name}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    if max_power_uw:
        (zone / "constraint_0_max_power_uw").write_text(f"{max_power_uw}\n")
    return zone


def set_uj(zone: Path, value_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{value_uj}\n")


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    """Two packages, package-0 with core (skipped) and dram subzones, plus psys (skipped)."""
    return {
        "pkg0": make_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000),
        "core0": make_zone(tmp_path, "intel-rapl:0:0", "core", 500_000),
        "dram0": make_zone(tmp_path, "intel-rapl:0:1", "dram", 250_000),
        "pkg1": make_zone(tmp_path, "intel-rapl:1", "package-1", 2_000_000),
        "psys": make_zone(tmp_path, "intel-rapl:2", "psys", 9_000_000),
        "mmio": make_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 7_000_000),
    }


@pytest.fixture(autouse=True)
def _fresh_probe_cache() -> Iterator[None]:
    rapl_available.cache_clear()
    yield
    rapl_available.cache_clear()


def test_keys_units_and_info(tmp_path: Path, tree: dict[str, Path]) -> None:
    meter = RaplMeter(str(tmp_path))
    r = meter.read()
    assert r.source == "rapl"
    assert r.energy_j == {"cpu:package-0": 1.0, "dram:package-0": 0.25, "cpu:package-1": 2.0}
    info = meter.info
    assert isinstance(info, MeterInfo)
    assert info.source == "rapl"
    assert info.devices == ("cpu:package-0", "cpu:package-1", "dram:package-0")
    assert info.resolution_j == pytest.approx(1e-6)
    assert info.update_period_s == pytest.approx(0.001)
    assert info.extra["max_energy_range_j:cpu:package-0"] == "1000.000000"


def test_a_zones_most_power_is_its_largest_enforced_limit_or_hardware_maximum(
    tmp_path: Path, tree: dict[str, Path]
) -> None:
    """As the kernel's powercap tree lays them out: package-0 with PL1 65 W and PL2 90 W enforced,
    package-1 with limits not enforced but a hardware maximum of 120 W, the dram zone with a limit
    file that does not parse; psys (skipped as a zone) says 400 W."""
    limits = {
        "pkg0": {
            "enabled": "1",
            "constraint_0_power_limit_uw": "65000000",
            "constraint_1_power_limit_uw": "90000000",
        },
        "pkg1": {
            "enabled": "0",
            "constraint_0_power_limit_uw": "300000000",
            "constraint_0_max_power_uw": "120000000",
        },
        "dram0": {"enabled": "1", "constraint_0_power_limit_uw": "n/a"},
        "psys": {"enabled": "1", "constraint_0_power_limit_uw": "400000000"},
    }
    for zone, files in limits.items():
        for name, text in files.items():
            (tree[zone] / name).write_text(text + "\n")
    assert RaplMeter(str(tmp_path)).info.max_power_w == {"cpu:package-0": 90.0, "cpu:package-1": 120.0}


def test_amd_rapl_zones(tmp_path: Path) -> None:
    make_zone(tmp_path, "amd-rapl:0", "package-0", 3_000_000)
    assert RaplMeter(str(tmp_path)).read().energy_j == {"cpu:package-0": 3.0}


def test_steps_are_exact_joules(tmp_path: Path, tree: dict[str, Path]) -> None:
    meter = RaplMeter(str(tmp_path))
    t0 = meter.read()
    set_uj(tree["pkg0"], 4_500_000)
    set_uj(tree["dram0"], 250_001)
    t1 = meter.read()
    assert t1.t_s >= t0.t_s
    assert t1.energy_j["cpu:package-0"] - t0.energy_j["cpu:package-0"] == pytest.approx(3.5, abs=1e-12)
    assert t1.energy_j["dram:package-0"] - t0.energy_j["dram:package-0"] == pytest.approx(1e-6, abs=1e-12)
    assert t1.energy_j["cpu:package-1"] == t0.energy_j["cpu:package-1"]


def test_wrap_around_is_undone_per_zone(tmp_path: Path, tree: dict[str, Path]) -> None:
    (tree["pkg0"] / "constraint_0_max_power_uw").write_text(f"{FAST_UW}\n")  # 999 J in microseconds
    meter = RaplMeter(str(tmp_path))
    set_uj(tree["pkg0"], MAX_UJ - 1_000_000)  # 999 J
    a = meter.read()
    set_uj(tree["pkg0"], 2_000_000)  # wrapped: 1 J to the top, then 2 J
    set_uj(tree["pkg1"], 2_500_000)  # no wrap
    b = meter.read()
    assert b.energy_j["cpu:package-0"] - a.energy_j["cpu:package-0"] == pytest.approx(3.0, abs=1e-9)
    assert b.energy_j["cpu:package-1"] - a.energy_j["cpu:package-1"] == pytest.approx(0.5, abs=1e-9)
    set_uj(tree["pkg0"], 1_000_000)  # a second wrap
    c = meter.read()
    assert c.energy_j["cpu:package-0"] - b.energy_j["cpu:package-0"] == pytest.approx(999.0, abs=1e-9)
    assert meter.wraps == {"cpu:package-0": 2, "cpu:package-1": 0, "dram:package-0": 0}
    set_uj(tree["pkg0"], 1_000_000)  # equal value: no wrap
    assert meter.read().energy_j["cpu:package-0"] == c.energy_j["cpu:package-0"]


def test_ledger_across_a_wrap_conserves_energy(tmp_path: Path) -> None:
    """Real meter + real ledger: 10 steps of 300 J through a 1000 J counter (three wraps)."""
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 0, max_power_uw=FAST_UW)
    meter = RaplMeter(str(tmp_path))
    # 300 J per millisecond is beyond any package: without lifting the physical bound the ledger
    # would drop these steps (that rule is tested in test_counters.py)
    ledger = Ledger(meter.read(), Limits.unbounded())
    value_uj = 0
    for i in range(10):
        value_uj = (value_uj + 300_000_000) % MAX_UJ
        set_uj(pkg, value_uj)
        if i == 3:
            ledger.begin("r", meter.read())
        elif i == 6:
            alloc = ledger.end("r", meter.read())
        else:
            ledger.observe(meter.read())
    totals = ledger.totals()
    assert totals.metered_j["cpu:package-0"] == pytest.approx(3000.0, abs=1e-6)
    assert alloc.joules == pytest.approx(900.0, abs=1e-6)  # steps 4, 5, 6
    assert totals.idle_j["cpu:package-0"] == pytest.approx(2100.0, abs=1e-6)
    assert totals.resets == 0


INTEL_RANGE_UJ = 262_143_328_850  # max_energy_range_uj of common Intel packages


def test_a_step_back_of_microjoules_is_no_wrap_and_claims_nothing(tmp_path: Path) -> None:
    """A counter read 10 µJ lower than before (a firmware glitch) is no wrap: read as one, it claimed
    the whole 262 kJ range for an interval. The ledger holds the old value until the counter passes
    it, so the energy is the test's own written climb, 100 kJ -> 100 kJ + 2 J, once."""
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 100_000_000_000, max_uj=INTEL_RANGE_UJ)
    meter = RaplMeter(str(tmp_path))
    first = meter.read()
    ledger = Ledger(first, Limits(slack_s=1.0))  # reads a second apart: 1 kJ at the generic 1000 W bound
    set_uj(pkg, 99_999_999_990)
    back = meter.read()
    ledger.observe(back)
    assert back.energy_j["cpu:package-0"] == pytest.approx(99_999.99999, abs=1e-9)
    set_uj(pkg, 100_002_000_000)
    ledger.observe(meter.read())
    totals = ledger.totals()
    assert meter.wraps == {"cpu:package-0": 0}
    assert totals.metered_j["cpu:package-0"] == pytest.approx(2.0, abs=1e-9)
    assert (totals.reorders, totals.dropped, totals.dropped_j) == (1, 0, 0.0)


def test_a_counter_restarted_near_zero_is_no_wrap_and_a_real_wrap_still_is(tmp_path: Path) -> None:
    """Reads microseconds apart at the generic 1000 W bound (1 J per millisecond of update period):
    999.9 J -> 0.1 J of a 1000 J range is 0.2 J through the top, a wrap; 500 J -> 0.1 J would be
    500.1 J through the top, more than the zone could draw, so it is a restart (the ledger counts its
    0.1 J), not a wrap worth 500.1 J."""
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 999_900_000)
    meter = RaplMeter(str(tmp_path))
    a = meter.read()
    set_uj(pkg, 100_000)
    b = meter.read()
    assert b.energy_j["cpu:package-0"] - a.energy_j["cpu:package-0"] == pytest.approx(0.2, abs=1e-9)
    assert meter.wraps == {"cpu:package-0": 1}
    set_uj(pkg, 500_000_000)
    ledger = Ledger(meter.read(), Limits(slack_s=1.0))
    set_uj(pkg, 100_000)
    ledger.observe(meter.read())
    assert meter.wraps == {"cpu:package-0": 1}
    totals = ledger.totals()
    assert totals.metered_j["cpu:package-0"] == pytest.approx(0.1, abs=1e-9)
    assert (totals.resets, totals.dropped) == (1, 0)


def test_failed_read_leaves_no_partial_state(tmp_path: Path, tree: dict[str, Path]) -> None:
    meter = RaplMeter(str(tmp_path))
    a = meter.read()
    set_uj(tree["pkg0"], 1_500_000)
    energy = tree["dram0"] / "energy_uj"
    energy.unlink()
    energy.mkdir()  # EISDIR on open
    with pytest.raises(MeterError, match="energy_uj"):
        meter.read()
    energy.rmdir()
    energy.write_text("260000\n")
    b = meter.read()
    assert b.energy_j["cpu:package-0"] - a.energy_j["cpu:package-0"] == pytest.approx(0.5, abs=1e-12)
    assert b.energy_j["dram:package-0"] - a.energy_j["dram:package-0"] == pytest.approx(0.01, abs=1e-12)
    assert sum(meter.wraps.values()) == 0


def test_dangling_symlink_raises(tmp_path: Path, tree: dict[str, Path]) -> None:
    meter = RaplMeter(str(tmp_path))
    energy = tree["pkg1"] / "energy_uj"
    energy.unlink()
    energy.symlink_to(tmp_path / "gone")
    with pytest.raises(MeterError, match=r"intel-rapl:1/energy_uj"):
        meter.read()
    assert rapl_available(str(tmp_path)) is False


def test_garbage_value_raises(tmp_path: Path, tree: dict[str, Path]) -> None:
    meter = RaplMeter(str(tmp_path))
    (tree["pkg0"] / "energy_uj").write_text("\n")
    with pytest.raises(MeterError, match="not an integer"):
        meter.read()


def test_permission_denied_raises_with_hint() -> None:
    """chmod 000 as a real permission check: as root, read from a forked child running as nobody."""
    root = Path(tempfile.mkdtemp(prefix="rapl-perm-"))
    try:
        os.chmod(root, 0o755)  # traversable by the unprivileged child
        pkg = make_zone(root, "intel-rapl:0", "package-0", 1_000_000)
        for p in (pkg, *pkg.iterdir()):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        meter = RaplMeter(str(root))
        meter.read()
        os.chmod(pkg / "energy_uj", 0)
        if os.geteuid() != 0:
            with pytest.raises(MeterError, match="not readable.*root-only"):
                meter.read()
            return
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, prove the tree is readable, then read the meter
            code = 3
            try:
                try:
                    os.setuid(65534)
                except OSError:
                    os._exit(2)
                (pkg / "name").read_text()  # control: same directory, readable file
                try:
                    meter.read()
                    code = 1
                except MeterError as e:
                    os.write(wfd, str(e).encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        message = os.read(rfd, 4096).decode()
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 2:
            pytest.skip("cannot drop privileges (setuid not permitted here)")
        assert code != 3, "the unprivileged child could not read a 0644 file beside energy_uj"
        assert code == 0, "an unreadable energy_uj was read without MeterError"
        assert "not readable" in message and "root-only" in message and "energy_uj" in message
    finally:
        shutil.rmtree(root)  # unlinking needs write access to the directory only


def test_no_zones_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MeterError, match="no powercap tree"):
        RaplMeter(str(tmp_path / "absent"))
    make_zone(tmp_path, "intel-rapl:0", "psys")  # not a package
    with pytest.raises(MeterError, match="no RAPL package zone"):
        RaplMeter(str(tmp_path))
    assert rapl_available(str(tmp_path)) is False
    assert rapl_available(str(tmp_path / "absent")) is False


def test_availability_probe_is_cached(tmp_path: Path, tree: dict[str, Path]) -> None:
    assert rapl_available(str(tmp_path)) is True
    (tree["pkg0"] / "energy_uj").unlink()
    assert rapl_available(str(tmp_path)) is True  # cached
    rapl_available.cache_clear()
    assert rapl_available(str(tmp_path)) is False


def test_concurrent_reads_never_see_a_false_wrap(tmp_path: Path) -> None:
    """Readers racing a writer: values only grow, so any wrap counted would be a locking bug."""
    pkg = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    meter = RaplMeter(str(tmp_path))
    stop = threading.Event()
    seen: list[list[float]] = [[] for _ in range(3)]

    def reader(out: list[float]) -> None:
        while not stop.is_set():
            out.append(meter.read().energy_j["cpu:package-0"])

    threads = [threading.Thread(target=reader, args=(s,)) for s in seen]
    for t in threads:
        t.start()
    for v in range(1, 200):
        tmp = pkg / "energy_uj.tmp"
        tmp.write_text(f"{v * 1000}\n")
        tmp.replace(pkg / "energy_uj")  # atomic, as sysfs is
    stop.set()
    for t in threads:
        t.join()
    assert meter.wraps == {"cpu:package-0": 0}
    for s in seen:
        assert s == sorted(s)
