"""Where a replica's work runs (``energy/footprint.py``, ``classifiers/llm_workers.py``) and what its
meter then covers: local GPUs and non-child processes, other nodes through their agents."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from serve_app.classifiers.llm_workers import describe_worker, physical_gpu_id
from serve_app.config_common import EnergyConfig
from serve_app.energy.footprint import (
    WorkerProcess,
    descendant_pids,
    plan_meter,
    sources_by_node,
    unmetered_gpu_nodes,
)
from serve_app.energy.probe import make_meter

A, B = "a" * 56, "b" * 56  # Ray node ids
NAMES = {A: "gpu-node-a", B: "gpu-node-b"}


def test_tp2_pp2_over_two_nodes_splits_by_node() -> None:
    """The study's two-node layout with TP=2 inside each PP stage: ray workers on both nodes."""
    workers = [
        WorkerProcess(101, A, ("GPU-aaaa-0",), "vllm-rank-0"),
        WorkerProcess(102, A, ("GPU-aaaa-1",), "vllm-rank-1"),
        WorkerProcess(201, B, ("GPU-bbbb-0",), "vllm-rank-2"),
        WorkerProcess(202, B, ("GPU-bbbb-1",), "vllm-rank-3"),
    ]
    plan = plan_meter(workers, [], A, "gpu-node-a", NAMES, descendants={10, 11})
    assert plan.local_gpu_ids == ["GPU-aaaa-0", "GPU-aaaa-1"]
    assert plan.local_pids == [101, 102]  # ray actors: not the replica's children
    assert [(r.node, r.pids, r.gpu_ids) for r in plan.remotes] == [
        ("gpu-node-b", (201, 202), ("GPU-bbbb-0", "GPU-bbbb-1"))
    ]
    assert plan.gpu_nodes == {"gpu-node-a", "gpu-node-b"}


def test_replica_on_a_node_without_workers() -> None:
    """A replica bundle on a CPU-only node: every GPU is remote, the local node holds none."""
    workers = [WorkerProcess(201, B, ("GPU-b0",)), WorkerProcess(202, B, ("GPU-b1",))]
    plan = plan_meter(workers, [], A, "gpu-node-a", NAMES)
    assert plan.local_gpu_ids == [] and plan.local_pids == []
    assert plan.gpu_nodes == {"gpu-node-b"}
    assert plan.remotes[0].node_id == B


def test_mp_workers_are_descendants_and_add_no_pids() -> None:
    """mp / uni executors: workers are the replica's children (counted with it); GPUs stay local,
    deduplicated against the replica's own Ray GPU ids (NVML resolution merges index and UUID)."""
    workers = [WorkerProcess(11, None, ("GPU-x",)), WorkerProcess(12, None, ("GPU-y",))]
    plan = plan_meter(workers, ["0", "GPU-x"], None, "host", {}, descendants={10, 11, 12})
    assert plan.local_gpu_ids == ["0", "GPU-x", "GPU-y"]
    assert plan.local_pids == [] and plan.remotes == []
    assert plan.gpu_nodes == {"host"}


def test_unknown_node_id_gets_a_short_name() -> None:
    plan = plan_meter([WorkerProcess(5, B)], [], A, "a", {})
    assert plan.remotes[0].node == B[:12]
    assert plan.gpu_nodes == frozenset()


def test_unmetered_gpu_nodes() -> None:
    assert unmetered_gpu_nodes({"n1"}, {"n1": "nvml"}) == []
    assert unmetered_gpu_nodes({"n1"}, {"n1": "estimate"}) == ["n1"]
    assert unmetered_gpu_nodes({"n2"}, {"n1": "nvml"}) == ["n2"]  # a node the meter does not know
    multi = {"n1": "nvml", "n2": "estimate", "n3": "nvml-power"}
    assert unmetered_gpu_nodes({"n1", "n2", "n3"}, multi) == ["n2"]
    assert unmetered_gpu_nodes(set(), {"n1": "estimate"}) == []


def test_sources_of_a_one_node_meter() -> None:
    meter = make_meter(EnergyConfig(meter="estimate"), node="n1")
    try:
        assert sources_by_node(meter) == {"n1": "estimate"}
    finally:
        meter.close()


def test_physical_gpu_id() -> None:
    assert physical_gpu_id(1, "3,5") == "5"
    assert physical_gpu_id(0, "GPU-abc, GPU-def") == "GPU-abc"
    assert physical_gpu_id(2, None) == "2"
    with pytest.raises(ValueError, match="not in CUDA_VISIBLE_DEVICES"):
        physical_gpu_id(2, "0,1")


def test_describe_worker_on_cpu() -> None:
    import torch

    place = describe_worker(torch.device("cpu"), 3)
    assert place["rank"] == 3 and place["gpu"] is None and place["device"] == "cpu"
    assert psutil.pid_exists(place["pid"])


# -- the meter a plan builds: a real process outside the replica's tree ---------------------------
@pytest.fixture()
def orphan_burner() -> Iterator[int]:
    """A CPU-burning process that is not ours: started through a parent that exits at once, so it
    is re-parented (like a Ray actor raylet started for us)."""
    burn = "import time\nt=time.time()\nwhile time.time()-t<30: pass"
    launcher = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {burn!r}], start_new_session=True,\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid)"
    )
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    try:
        yield pid
    finally:
        psutil.Process(pid).kill()


def test_local_pids_join_the_estimate(orphan_burner: int) -> None:
    assert orphan_burner not in descendant_pids()
    cfg = EnergyConfig(meter="estimate")
    alone, with_worker = make_meter(cfg), make_meter(cfg, local_pids=[orphan_burner])
    try:
        r0, w0 = alone.read(), with_worker.read()
        time.sleep(1.0)
        r1, w1 = alone.read(), with_worker.read()
    finally:
        alone.close()
        with_worker.close()
    per_core_w = cfg.cpu_tdp_w / (cfg.cpu_cores or psutil.cpu_count())
    own = r1.energy_j["cpu:process"] - r0.energy_j["cpu:process"]
    both = w1.energy_j["cpu:process"] - w0.energy_j["cpu:process"]
    # The burner spins one core for the whole second (at least half of it on a loaded 2-core box).
    assert both - own > 0.5 * per_core_w, (own, both, per_core_w)
