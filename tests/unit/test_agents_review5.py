"""Review 5: the node energy agent's watched groups, driven directly (`NodeEnergyAgentImpl`) with real
processes and the node's own estimate counters. Figures are checked against the processes' own CPU
time (psutil). Units: J, s."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.agents import NodeEnergyAgentImpl
from serve_app.energy.footprint import sources_by_node, unmatched_gpu_nodes, unmetered_gpu_nodes
from serve_app.energy.share import AccountShareMeter
from tests.unit.test_account import SPIN, spawn
from tests.unit.test_nvml import UUIDS, FakeNvml

pytestmark = pytest.mark.unit


def _fresh_tick(agent: NodeEnergyAgentImpl) -> tuple[dict[str, Any], float]:
    """The account's groups right after a new tick, and the stage's CPU time is read by the caller."""
    ticks = agent.account_snapshot()[0]["ticks"]
    deadline = time.monotonic() + 30
    while agent.account_snapshot()[0]["ticks"] == ticks:
        assert time.monotonic() < deadline, "no tick"
        time.sleep(0.01)
    snap: dict[str, Any] = agent.account_snapshot()[0]
    return snap, time.monotonic()


def _cpu(pid: int) -> float:
    c = psutil.Process(pid).cpu_times()
    return float(c.user + c.system)


def test_a_process_two_groups_claimed_stays_with_the_one_still_watching_it() -> None:
    """Two replicas on other nodes claim the same process here (the later claim holds it: counted
    once). When the later one goes away, the process must go back to the replica that still watches
    it, not to its own title's group: before, the earlier replica's share stopped growing, silently,
    while its process kept working (its energy went to ``other``)."""
    stage = subprocess.Popen([sys.executable, "-c", SPIN])  # untitled: `other` unless claimed
    agent = NodeEnergyAgentImpl("n1")
    try:
        cfg = EnergyConfig(meter="estimate", account_period_s=0.2).model_dump()
        agent.watch("1@head-a", cfg, [stage.pid], [])
        agent.watch("2@head-b", cfg, [stage.pid], [])
        _fresh_tick(agent)
        agent.unwatch("2@head-b")
        _fresh_tick(agent)  # the first tick after the release
        s0, _ = _fresh_tick(agent)
        c0 = _cpu(stage.pid)
        time.sleep(1.5)
        s1, _ = _fresh_tick(agent)
        c1 = _cpu(stage.pid)

        def cpu_of(snap: dict[str, Any], group: str) -> float:
            return float(snap["groups"].get(group, {}).get("cpu_s", 0.0))

        worked = c1 - c0
        assert worked > 0.1, worked
        got_a = cpu_of(s1, "replica:1@head-a") - cpu_of(s0, "replica:1@head-a")
        got_b = cpu_of(s1, "replica:2@head-b") - cpu_of(s0, "replica:2@head-b")
        assert got_b == 0.0
        assert got_a == pytest.approx(worked, abs=0.08), (got_a, worked)
        read = agent.read("1@head-a")
        assert "error" not in read and sum(read["energy_j"].values()) > 0
        assert abs(s1["closure_error_j"]) < 1e-9 * s1["metered_j"]
    finally:
        agent.close()
        stage.kill()
        stage.wait(timeout=10)


def test_gpus_nvml_reads_on_a_node_without_rapl_are_not_flagged_unmetered(
    tmp_path: Path, gpus: FakeNvml
) -> None:
    """A GPU node whose RAPL is not readable (a container, most cloud VMs): the account's CPU counter
    is the estimate, its GPUs NVML's. A replica's share is labelled ``estimate`` (never a measurement),
    but its GPUs are read: before, ``unmetered_gpu_nodes`` judged by that label and every tag of a GPU
    replica said ``gpus_not_metered``, although the test's GPU energy is in its share."""
    cfg = EnergyConfig(meter="auto", rapl_root=str(tmp_path), idle_w={"gpu": 0}, account_period_s=10)
    impl = NodeEnergyAgentImpl("n1")
    key = impl.start_account(cfg.model_dump())["key"]
    account = impl.account(key)
    assert account is not None
    assert account.sources == {
        "cpu:node": "estimate",
        "dram:node": "estimate",
        "gpu:0": "nvml",
        "gpu:1": "nvml",
    }
    replica = spawn("ray::ServeReplica:app:llm", wait=True)
    stage = spawn("ray::RayWorkerWrapper", wait=True)  # a rank of a replica on another node
    meter = None
    try:
        account.tick()  # the replica seen
        # the replica's own GPU (what footprint.account_meter claims), and a remote replica's rank
        assert impl.claim(key, [], replica.pid, [UUIDS[1]]) == []
        info = impl.watch("9@head-1", cfg.model_dump(), [stage.pid], [UUIDS[0]])
        gpus.gpus[1].energy_mj = (gpus.gpus[1].energy_mj or 0) + 30_000  # 30 J on the replica's GPU
        account.tick()
        meter = AccountShareMeter(
            None, "n1", 10.0, pid=replica.pid, fetch=account.share_of_pid, own_group=True
        )
        assert meter.read().energy_j["gpu:1"] == pytest.approx(
            30.0
        )  # its GPU is read, and it is in its share
        assert meter.info.source == "estimate"  # the share's label stays honest
        # what deployment.build_meter asks: no node of the replica's GPUs goes unmetered
        assert unmetered_gpu_nodes({"n1"}, sources_by_node(meter), unmatched_gpu_nodes(meter)) == []
        # the remote rank's node alike: what its agent tells the replica's MultiNodeMeter at watch
        assert info["source"] == "estimate" and info["unmatched_gpus"] == []
        assert info.get("gpu_source") == "nvml"
        # a GPU no counter matches is still flagged
        assert impl.claim(key, [], replica.pid, ["GPU-ffff9999"]) == ["GPU-ffff9999"]
    finally:
        if meter is not None:
            meter.close()
        impl.close()
        for p in (replica, stage):
            p.kill()
            p.wait(timeout=10)
