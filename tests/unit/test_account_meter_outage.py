"""A node account whose meters fail one at a time: the energy agent's account on a RAPL tree the test
writes and NVML through the scripted stand-in for the vendor library (``test_nvml.py``: ``pynvml``'s
interface, nothing else), with real processes titled as Ray titles them. A lost GPU stops its own
counters only; a replica that draws on a failing counter says so; the outage's energy reaches no request
after it. Every figure is checked against what the test wrote. Units: the fake reports mJ; figures are J."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.account import NodeAccount
from serve_app.energy.agents import NodeEnergyAgentImpl
from serve_app.energy.base import MeterError
from serve_app.energy.nvml import nvml_available
from serve_app.energy.rapl import rapl_available
from serve_app.energy.sampler import Sampler
from serve_app.energy.share import AccountShareMeter
from tests.unit.test_account import make_rapl, spawn
from tests.unit.test_nvml import UUIDS, FakeGpu, FakeNvml

pytestmark = pytest.mark.unit
IDLE = "import time\ntime.sleep(600)\n"  # a replica that uses no CPU: its share moves by GPU ticks only


@pytest.fixture()
def gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    fake = FakeNvml([FakeGpu(UUIDS[0], energy_mj=1_000_000), FakeGpu(UUIDS[1], energy_mj=2_000_000)])
    module = types.SimpleNamespace(
        **{n: getattr(fake, n) for n in dir(fake) if n.startswith(("nvml", "NVML"))}
    )
    monkeypatch.setitem(sys.modules, "pynvml", module)
    nvml_available.cache_clear()
    rapl_available.cache_clear()
    yield fake
    nvml_available.cache_clear()
    rapl_available.cache_clear()


@pytest.fixture()
def node(
    tmp_path: Path, gpus: FakeNvml
) -> Iterator[tuple[NodeEnergyAgentImpl, NodeAccount, str, dict[str, Path]]]:
    zones = make_rapl(tmp_path)
    cfg = EnergyConfig(
        meter="auto", rapl_root=str(tmp_path), idle_w={"cpu": 0, "dram": 0, "gpu": 0}, account_period_s=10
    ).model_dump()
    impl = NodeEnergyAgentImpl("n1")
    key = impl.start_account(cfg)["key"]
    account = impl.account(key)
    assert account is not None and {"gpu:0", "gpu:1", "cpu:package-0"} <= set(account.sources)
    try:
        yield impl, account, key, zones
    finally:
        impl.close()


def _procs(*specs: tuple[str, str]) -> list[subprocess.Popen[bytes]]:
    return [spawn(title, code, wait=True) for title, code in specs]


def _advance(path: Path, joules: float) -> None:
    path.write_text(f"{int(path.read_text()) + int(joules * 1e6)}\n")


def _wait_poll(meter: AccountShareMeter, failing: bool) -> None:
    deadline = time.monotonic() + 10
    while (meter.error is not None) != failing:
        assert time.monotonic() < deadline, (
            f"share never {'failed' if failing else 'recovered'}: {meter.error}"
        )
        time.sleep(0.02)


def test_a_lost_gpu_stops_only_its_own_counters_and_its_outage_is_nobodys(
    node: tuple[NodeEnergyAgentImpl, NodeAccount, str, dict[str, Path]], gpus: FakeNvml
) -> None:
    impl, account, key, zones = node
    cpu_replica, gpu_replica = _procs(
        ("ray::ServeReplica:app:tfidf", IDLE), ("ray::ServeReplica:app:llm", IDLE)
    )
    meters: list[AccountShareMeter] = []
    try:
        account.tick()
        assert impl.claim(key, [], gpu_replica.pid, [UUIDS[1]]) == []
        account.tick()
        cpu0 = account.snapshot()["metered_by_counter_j"].get("cpu:package-0", 0.0)
        for proc in (cpu_replica, gpu_replica):
            meters.append(
                AccountShareMeter(None, "n1", 0.2, pid=proc.pid, fetch=account.share_of_pid, own_group=True)
            )
        cpu_meter, gpu_meter = meters
        # the GPU is lost; RAPL goes on: 40 J on the package while it is gone, 70 J on the lost GPU
        gpus.gpus[1].lost = True
        _advance(zones["package-0"], 40.0)
        gpus.gpus[1].energy_mj = (gpus.gpus[1].energy_mj or 0) + 70_000
        account.tick()
        snap = account.snapshot()
        assert snap["error"] is None, "one lost GPU stopped the whole node account"
        assert set(snap["failing"]) == {"gpu:0", "gpu:1"} and "GPU is lost" in snap["failing"]["gpu:1"]
        assert snap["metered_by_counter_j"]["cpu:package-0"] - cpu0 == pytest.approx(40.0)
        # the CPU replica draws on no failing counter: its figures go on; the GPU one's stop, saying why
        _wait_poll(gpu_meter, failing=True)
        assert cpu_meter.error is None and "cpu:package-0" in cpu_meter.read().energy_j
        assert "gpu:1" in str(gpu_meter.error)
        with pytest.raises(MeterError, match="gpu:1"):
            gpu_meter.read()
        # back: 30 J more during the outage, then 20 J after it. The counter starts again where it
        # is: the 100 J of the outage are metered by nobody, the 20 J after it are the replica's
        gpus.gpus[1].lost = False
        gpus.gpus[1].energy_mj = (gpus.gpus[1].energy_mj or 0) + 30_000
        account.tick()
        snap = account.snapshot()
        assert snap["failing"] == {} and snap["counter_gaps"] == 2 and "counter_gap" in snap["flags"]
        assert snap["metered_by_counter_j"].get("gpu:1", 0.0) == pytest.approx(0.0)
        gpus.gpus[1].energy_mj = (gpus.gpus[1].energy_mj or 0) + 20_000
        account.tick()
        assert account.share_of_pid(gpu_replica.pid)["energy_j"]["gpu:1"] == pytest.approx(20.0)
        assert account.snapshot()["metered_by_counter_j"]["gpu:1"] == pytest.approx(20.0)
        _wait_poll(gpu_meter, failing=False)
    finally:
        for m in meters:
            m.close()
        for p in (cpu_replica, gpu_replica):
            p.kill()
            p.wait(timeout=10)


def test_a_request_after_an_outage_is_not_charged_the_outages_energy(
    node: tuple[NodeEnergyAgentImpl, NodeAccount, str, dict[str, Path]], gpus: FakeNvml
) -> None:
    """Every counter fails (the whole account in error) while the replica's GPU draws 100 J; the account
    splits that at its first tick back (cumulative counters). The replica's sampler read the failure,
    so its ledger takes the first reading back as a new origin (``Ledger.rebase``): the share must show
    the 100 J there, at once, not release them over the next period into the requests that follow."""
    impl, account, key, zones = node
    (replica,) = _procs(("ray::ServeReplica:app:llm", IDLE))
    meter = None
    try:
        account.tick()
        assert impl.claim(key, [], replica.pid, [UUIDS[1]]) == []
        account.tick()
        period_s = 1.0
        meter = AccountShareMeter(
            None, "n1", period_s, pid=replica.pid, fetch=account.share_of_pid, own_group=True
        )
        sampler = Sampler(meter, period_s)  # its thread not started: the test reads
        assert sampler.read() is not None
        zones["package-0"].rename(zones["package-0"].with_name("gone"))
        gpus.gpus[1].lost = True
        account.tick()
        assert account.snapshot()["error"] is not None
        _wait_poll(meter, failing=True)
        assert sampler.read() is None  # the replica's tags say unavailable
        zones["package-0"].with_name("gone").rename(zones["package-0"])
        gpus.gpus[1].lost = False
        gpus.gpus[1].energy_mj = (gpus.gpus[1].energy_mj or 0) + 100_000
        account.tick()
        assert account.share_of_pid(replica.pid)["energy_j"]["gpu:1"] == pytest.approx(100.0)
        _wait_poll(meter, failing=False)
        time.sleep(0.5 * period_s)  # let the poll that cleared the error also take the new tick
        first = sampler.read()
        assert first is not None  # the new origin
        sampler.ledger.begin("after", first)
        time.sleep(1.5 * period_s)  # more than a period: a released gap would all be in it by now
        reading = sampler.read()
        assert reading is not None
        allocation = sampler.ledger.end("after", reading)
        assert allocation.energy_j.get("gpu:1", 0.0) == pytest.approx(0.0, abs=1e-6), allocation
    finally:
        if meter is not None:
            meter.close()
        replica.kill()
        replica.wait(timeout=10)
