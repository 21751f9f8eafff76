"""Sweep review 6, on a real two-node local cluster: each node's GPUs are its own GPUs of the machine.
Every raylet numbers its GPUs from 0; without a ``CUDA_VISIBLE_DEVICES`` share of its own, a task given
GPU 0 on ``worker-1`` ran on the machine's GPU 0, the one the head's task had (two pipeline ranks of a
``2gpu-2nodes`` topology on one GPU, each metering it). The GPUs here are Ray's logical ones: no GPU is
touched, only the ids Ray hands out are read. Runs in a subprocess (its own Ray driver)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SCENARIO = """
import json, os, sys
import ray
from serve_app.topology.local_cluster import LocalCluster, NodeSpec, connect

@ray.remote(num_gpus=1)
def devices():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), [str(g) for g in ray.get_gpu_ids()]

nodes = [NodeSpec("head", 1, 1), NodeSpec("worker-1", 1, 2)]
with LocalCluster(nodes) as cluster:
    connect(cluster.address, logging_level="WARNING", namespace="review6-gpus")
    out = {}
    for name, gpus in (("head", 1), ("worker-1", 2)):
        task = devices.options(num_gpus=gpus, resources={f"node:{name}": 0.01})
        out[name] = ray.get(task.remote(), timeout=120)
print("RESULT " + json.dumps(out))
"""


def _run(env_extra: dict[str, str]) -> dict[str, list[object]]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update({"RAY_AUTH_MODE": "disabled", **env_extra})
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


def test_each_local_node_gets_its_own_gpus_of_the_machine() -> None:
    got = _run({})
    assert got["head"] == ["0", ["0"]]
    visible, ids = got["worker-1"]
    assert sorted(ids) == ["1", "2"] and visible is not None and sorted(visible.split(",")) == ["1", "2"]


def test_the_launchers_visible_gpus_are_shared_out_in_node_order() -> None:
    got = _run({"CUDA_VISIBLE_DEVICES": "5,6,7"})
    assert got["head"] == ["5", ["5"]]
    assert sorted(got["worker-1"][1]) == ["6", "7"]  # type: ignore[arg-type]
