"""The node account's GPUs without a GPU: the energy agent's account on a RAPL tree the test writes
and NVML through the scripted stand-in for the vendor library of ``test_nvml.py`` (``pynvml``'s
interface, nothing else). GPUs given by UUID (as vLLM's workers report them) reach the group that
uses them; a planned GPU that matches no counter is said so; a share is labelled by the counters its
energy comes from; a lost GPU stops its own counters only, and its outage reaches no request after it.
Units: the fake reports mJ; figures are J."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.agents import NodeEnergyAgentImpl
from serve_app.energy.base import MeterError
from serve_app.energy.footprint import unmatched_gpu_nodes, unmetered_gpu_nodes
from serve_app.energy.sampler import Sampler
from serve_app.energy.share import AccountShareMeter
from tests.unit.test_account import make_rapl, spawn
from tests.unit.test_nvml import UUIDS, FakeNvml

pytestmark = pytest.mark.unit


@pytest.fixture()
def agent(tmp_path: Path, gpus: FakeNvml) -> Iterator[tuple[NodeEnergyAgentImpl, str, dict[str, object]]]:
    make_rapl(tmp_path)
    # no baseline (the test's steps are its active energy); a 10 s period: the test makes the ticks
    cfg = EnergyConfig(
        meter="auto", rapl_root=str(tmp_path), idle_w={"cpu": 0, "dram": 0, "gpu": 0}, account_period_s=10
    ).model_dump()
    impl = NodeEnergyAgentImpl("n1")
    key = impl.start_account(cfg)["key"]
    account = impl.account(key)
    assert account is not None and {"gpu:0", "gpu:1", "cpu:package-0"} <= set(account.sources)
    try:
        yield impl, key, cfg
    finally:
        impl.close()


@pytest.fixture()
def replica() -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn("ray::ServeReplica:app:llm", wait=True)
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_gpus_claimed_by_uuid_are_the_replicas_and_an_unknown_one_is_reported(
    agent: tuple[NodeEnergyAgentImpl, str, dict[str, object]],
    gpus: FakeNvml,
    replica: subprocess.Popen[bytes],
) -> None:
    impl, key, _ = agent
    account = impl.account(key)
    assert account is not None
    account.tick()  # the replica seen
    # what footprint.account_meter sends: the workers' GPUs as vLLM reports them (UUIDs)
    unmatched = impl.claim(key, [], replica.pid, [UUIDS[1], "GPU-ffff9999-0000"])
    assert unmatched == ["GPU-ffff9999-0000"]
    gpus.gpus[0].energy_mj = (gpus.gpus[0].energy_mj or 0) + 40_000  # 40 J on a GPU the replica does not use
    gpus.gpus[1].energy_mj = (gpus.gpus[1].energy_mj or 0) + 70_000  # 70 J on its GPU
    account.tick()
    share = account.share_of_pid(replica.pid)
    assert share["energy_j"].get("gpu:1") == pytest.approx(70.0)
    assert "gpu:0" not in share["energy_j"]
    assert account.group_energy_j("other").get("gpu:0") == pytest.approx(40.0)
    meter = AccountShareMeter(
        None,
        "n1",
        10.0,
        pid=replica.pid,
        fetch=account.share_of_pid,
        unmatched_gpus=unmatched,
        own_group=True,
    )
    try:
        assert meter.info.source == "nvml"
        # the unknown GPU's energy is in no share: the replica's tags must not pass the rest off as whole
        assert unmatched_gpu_nodes(meter) == ["n1"]
        assert unmetered_gpu_nodes({"n1"}, {"n1": meter.info.source}, unmatched_gpu_nodes(meter)) == ["n1"]
    finally:
        meter.close()


def test_a_remote_group_watched_with_gpu_uuids_gets_their_energy(
    agent: tuple[NodeEnergyAgentImpl, str, dict[str, object]], gpus: FakeNvml
) -> None:
    impl, key, cfg = agent
    worker = spawn("ray::RayWorkerWrapper", wait=True)  # a pipeline stage of a replica on another node
    try:
        info = impl.watch("77@head-1", cfg, [worker.pid], [UUIDS[0]])
        assert info["unmatched_gpus"] == [] and info["source"] == "nvml"
        account = impl.account(key)
        assert account is not None
        account.tick()
        gpus.gpus[0].energy_mj = (gpus.gpus[0].energy_mj or 0) + 25_000
        account.tick()
        # the group's exact share, which the agent's share meter reconciles to at its next poll
        assert account.share_of_group("replica:77@head-1")["energy_j"]["gpu:0"] == pytest.approx(25.0)
        assert account.group_energy_j("other").get("gpu:0", 0.0) == 0.0
        assert impl.watch("78@head-1", cfg, [worker.pid], ["GPU-ffff9999"])["unmatched_gpus"] == [
            "GPU-ffff9999"
        ]
    finally:
        worker.kill()
        worker.wait(timeout=10)


def test_a_cpu_only_share_on_a_gpu_node_is_labelled_by_its_cpu_counter(
    agent: tuple[NodeEnergyAgentImpl, str, dict[str, object]],
    gpus: FakeNvml,
    replica: subprocess.Popen[bytes],
) -> None:
    """A CPU classifier (no GPU claimed) on a node whose account also reads GPUs: all of its joules come
    from RAPL, so its tags say ``rapl``, not ``nvml``."""
    impl, key, _ = agent
    account = impl.account(key)
    assert account is not None
    account.tick()
    gpus.gpus[0].energy_mj = (gpus.gpus[0].energy_mj or 0) + 30_000
    account.tick()
    meter = AccountShareMeter(None, "n1", 10.0, pid=replica.pid, fetch=account.share_of_pid, own_group=True)
    try:
        assert meter.error is None and meter.group == f"replica:{replica.pid}"
        assert {k for k, v in meter._exact.items() if v > 0} <= {"cpu:package-0", "dram:package-0"}
        assert meter.info.source == "rapl"
    finally:
        meter.close()


# -- meters that fail one at a time: a lost GPU stops its own counters only; a replica that draws on a
# failing counter says so; the outage's energy reaches no request after it (against what the test wrote)
IDLE = "import time\ntime.sleep(600)\n"  # a replica that uses no CPU: its share moves by GPU ticks only


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
    agent: tuple[NodeEnergyAgentImpl, str, dict[str, object]], gpus: FakeNvml, tmp_path: Path
) -> None:
    impl, key, _ = agent
    account = impl.account(key)
    assert account is not None
    package = tmp_path / "intel-rapl:0" / "energy_uj"  # make_rapl's package zone
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
        _advance(package, 40.0)
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
    agent: tuple[NodeEnergyAgentImpl, str, dict[str, object]], gpus: FakeNvml, tmp_path: Path
) -> None:
    """Every counter fails (the whole account in error) while the replica's GPU draws 100 J; the account
    splits that at its first tick back (cumulative counters). The replica's sampler read the failure,
    so its ledger takes the first reading back as a new origin (``Ledger.rebase``): the share must show
    the 100 J there, at once, not release them over the next period into the requests that follow."""
    impl, key, _ = agent
    account = impl.account(key)
    assert account is not None
    package = tmp_path / "intel-rapl:0" / "energy_uj"  # make_rapl's package zone
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
        package.rename(package.with_name("gone"))
        gpus.gpus[1].lost = True
        account.tick()
        assert account.snapshot()["error"] is not None
        _wait_poll(meter, failing=True)
        assert sampler.read() is None  # the replica's tags say unavailable
        package.with_name("gone").rename(package)
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
