"""The node account's GPUs without a GPU: the energy agent's account on a RAPL tree the test writes
and NVML through the scripted stand-in for the vendor library of ``test_nvml.py`` (``pynvml``'s
interface, nothing else). GPUs given by UUID (as vLLM's workers report them) reach the group that
uses them; a planned GPU that matches no counter is said so; a share is labelled by the counters its
energy comes from. Units: the fake reports mJ; figures are J."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.agents import NodeEnergyAgentImpl
from serve_app.energy.footprint import unmatched_gpu_nodes, unmetered_gpu_nodes
from serve_app.energy.nvml import nvml_available
from serve_app.energy.rapl import rapl_available
from serve_app.energy.share import AccountShareMeter
from tests.unit.test_account import make_rapl, spawn
from tests.unit.test_nvml import UUIDS, FakeGpu, FakeNvml

pytestmark = pytest.mark.unit


@pytest.fixture()
def gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """Two GPUs behind the ``pynvml`` module, as the node's agent imports it."""
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
