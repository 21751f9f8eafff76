"""Two Ray nodes on one machine (the local launcher): a replica pinned to the second node, and a
classifier whose work spans both nodes (feature stage on one node, head on the other, one placement
group with STRICT_SPREAD bundles). Checks that energy tags carry both nodes' contributions and that
energy is conserved: metered = attributed + idle, and the tags sum to the attributed energy.

The scenario runs in a subprocess: it needs its own Ray driver (connected to the two-node cluster),
while the test session may already hold the single-node Ray of ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.scenario import (
    loopback_driver,
    run_scenario,
    spanning_pipeline,
    trained_demo,
    two_nodes,
    wait_200,
)

N_REQUESTS = 24
pytestmark = pytest.mark.slow


def _scenario(out_path: str) -> None:  # runs in the subprocess
    loopback_driver()
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from ray import serve

    from serve_app.app import build_app

    art, texts = trained_demo(["bow-logreg", "tfidf-logreg"])
    texts = texts[:N_REQUESTS]
    result: dict[str, Any] = {}
    with two_nodes("accuwatt-two-node") as base:
        spanning = spanning_pipeline("tfidf-logreg-2nodes")
        packed = {  # the same two stages on one node: the stage is a Ray actor, not the replica's child
            "kind": "pipeline",
            "id": "tfidf-logreg-packed",
            "model": "tfidf-logreg",
            "deployment": {"num_cpus": 1.0, "resources": {"node:head": 0.01}},
            "feature_resources": {"node:head": 0.01},
            "placement_strategy": "PACK",
        }
        packed["deployment"] = {**packed["deployment"], "health_check_period_s": 1.0}
        classifiers: list[dict[str, Any]] = [
            {"kind": "traditional", "id": "bow-logreg", "deployment": {"resources": {"node:worker-1": 0.01}}},
            spanning,
            packed,
        ]
        serve.run(
            # the router beside the proxy on head: the serving overhead is drawn there (unpinned, Ray
            # put it on worker-1 in some runs, and the overhead then counted on worker-1)
            build_app(
                {
                    "artifacts_dir": str(art),
                    "router": {"resources": {"node:head": 0.01}},
                    "classifiers": classifiers,
                }
            ),
            name="accuwatt",
            route_prefix="/",
            blocking=False,
        )
        with httpx.Client(timeout=60, trust_env=False) as c:
            wait_200(c, base + "/readyz")
            result["models"] = c.get(base + "/v1/models").json()
            ids = ["bow-logreg", "tfidf-logreg-2nodes", "tfidf-logreg-packed"]
            with ThreadPoolExecutor(4) as pool:
                for mid in ids:
                    result[mid] = list(
                        pool.map(
                            lambda t, m=mid: c.post(
                                base + "/v1/classify", json={"model": m, "text": t}
                            ).json(),
                            texts,
                        )
                    )
            import time

            time.sleep(2.5)  # two export periods: /v1/energy snapshots are current
            result["energy"] = c.get(base + "/v1/energy").json()
            # the packed pipeline's feature stage dies: Serve's health check must replace the replica
            # (a replica that only failed its requests stayed, and every request got 500 for good)
            packed_model = next(m for m in result["models"]["models"] if m["id"] == "tfidf-logreg-packed")
            stage_pid = int(packed_model["details"]["feature_pid"])
            os.kill(stage_pid, signal.SIGKILL)  # a process this scenario's cluster started
            result["stage_killed"] = {"pid": stage_pid, **_recovered(c, base, stage_pid, texts[0])}
        serve.shutdown()
    Path(out_path).write_text(json.dumps(result, default=str))


def _recovered(c: Any, base: str, dead_pid: int, text: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll until ``tfidf-logreg-packed`` runs a feature stage other than ``dead_pid`` and answers; the
    status codes seen on the way, the new stage's PID and how long it took."""
    import time

    t0 = time.monotonic()
    seen: list[int] = []
    while time.monotonic() - t0 < timeout_s:
        r = c.post(base + "/v1/classify", json={"model": "tfidf-logreg-packed", "text": text})
        seen.append(r.status_code)
        models = {m["id"]: m for m in c.get(base + "/v1/models").json()["models"]}
        pid = models["tfidf-logreg-packed"].get("details", {}).get("feature_pid")
        if r.status_code == 200 and pid is not None and int(pid) != dead_pid:
            return {"new_pid": int(pid), "statuses": seen, "answer": r.json(), "s": time.monotonic() - t0}
        time.sleep(0.5)
    return {"new_pid": None, "statuses": seen[-20:], "s": time.monotonic() - t0}


@pytest.fixture(scope="module")
def two_node_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("two-node") / "result.json"
    return run_scenario("tests.integration.test_cluster_two_nodes", out)


def test_replica_pinned_to_second_node(two_node_result: dict[str, Any]) -> None:
    answers = two_node_result["bow-logreg"]
    assert len(answers) == N_REQUESTS and all("energy" in a for a in answers), answers[:1]
    for a in answers:
        e = a["energy"]
        assert e["joules"] is not None and e["joules"] >= 0
        # the model's energy is drawn on worker-1; the serving overhead (router, proxy) on the head
        assert "worker-1" in e["nodes"] and set(e["nodes"]) <= {"head", "worker-1"}, e
        assert e["nodes_j"].get("worker-1", 0.0) == pytest.approx(e["model_j"], abs=1e-9), e
        if e["scope"] == "model+serving":
            assert e["nodes_j"].get("head", 0.0) == pytest.approx(e["overhead_j"], abs=1e-9), e
    assert any(a["energy"]["scope"] == "model+serving" for a in answers)
    model = next(m for m in two_node_result["models"]["models"] if m["id"] == "bow-logreg")
    assert model.get("node", "worker-1") == "worker-1"


def test_work_spanning_two_nodes_is_metered_on_both(two_node_result: dict[str, Any]) -> None:
    answers = two_node_result["tfidf-logreg-2nodes"]
    assert len(answers) == N_REQUESTS and all(a["energy"]["joules"] is not None for a in answers)
    devices = {d.split("/", 1)[0] for a in answers for d in a["energy"]["devices"]}
    assert {"head", "worker-1"} <= devices
    # Every request's feature stage ran on worker-1, and every tag has a part from it, however short
    # the request: both ends of its window wait for a poll of worker-1's agent, and that agent reads
    # the stage's CPU time in nanoseconds, not in 10 ms ticks (with either missing, many tags had none)
    assert all(a["energy"]["nodes_j"].get("worker-1", 0.0) > 0 for a in answers), [
        a["energy"]["nodes_j"] for a in answers
    ]
    model = next(m for m in two_node_result["models"]["models"] if m["id"] == "tfidf-logreg-2nodes")
    assert model["details"]["stages"] == {"features": "worker-1", "head": "head"}
    reps = two_node_result["energy"]["deployments"]["tfidf-logreg-2nodes"]["replicas"]
    rep = next(iter(reps.values()))
    assert rep["nodes_j"].keys() == {"head", "worker-1"} and min(rep["nodes_j"].values()) > 0, rep["nodes_j"]
    assert sum(rep["nodes_j"].values()) == pytest.approx(rep["metered_j"], rel=1e-9)
    assert rep["metered_j"] == pytest.approx(rep["attributed_j"] + rep["idle_j"], rel=1e-6)
    # the replica's own share (model_j); joules adds the serving overhead (energy/overhead.py)
    assert sum(a["energy"]["model_j"] for a in answers) == pytest.approx(rep["attributed_j"], rel=1e-6)
    # worker-1's part is a group of worker-1's node account (the stage's process, counted there once,
    # not a meter of its own beside the account): the replica read no more than that group holds
    group = rep["remote_groups"]["worker-1"]
    remote = two_node_result["energy"]["nodes"]["worker-1"]["groups"][group]
    assert remote["kind"] == "replica" and remote["cpu_s"] > 0, remote
    # shown = exact share + what the extrapolation since the last tick has not settled yet
    bound = remote["j"] + rep["remote_pending_j"]["worker-1"] + 1e-9
    assert 0 < rep["nodes_j"]["worker-1"] <= bound, (rep["nodes_j"], rep["remote_pending_j"], remote)
    assert not any("not_in_node_account" in a["energy"]["flags"] for a in answers)
    # both nodes' shares extrapolate between ticks: their recent corrections, added, bound a tag's edges
    assert rep["edge_error_j"] is not None and rep["edge_error_j"] >= 0, rep
    # each node's counters cap its part at that node's most power: the estimate's TDP and all of the
    # memory (both nodes are this machine: MemTotal read here) x W/GB, keyed by node
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_gb = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) * 1024 / 1e9
    most = {
        f"{d}:{n}:node": w for n in ("head", "worker-1") for d, w in (("cpu", 65.0), ("dram", mem_gb * 0.375))
    }
    assert rep["max_power_w"] == pytest.approx(most), rep["max_power_w"]


def test_packed_stages_are_metered_on_their_one_node(two_node_result: dict[str, Any]) -> None:
    """PACK puts the feature stage beside the replica: its process joins the replica's estimate."""
    model = next(m for m in two_node_result["models"]["models"] if m["id"] == "tfidf-logreg-packed")
    assert model["details"]["stages"] == {"features": "head", "head": "head"}
    assert f"cpu-process:{model['details']['feature_pid']}" in model["energy_devices"]
    answers = two_node_result["tfidf-logreg-packed"]
    assert all(a["energy"]["nodes"] == ["head"] and a["energy"]["joules"] > 0 for a in answers)


def test_a_dead_feature_stage_is_replaced_by_serves_health_check(two_node_result: dict[str, Any]) -> None:
    """The stage's process killed (SIGKILL, by the PID ``/v1/models`` showed): the replica's
    ``check_health`` fails, Serve starts a new replica with a new stage, and the model answers again."""
    killed = two_node_result["stage_killed"]
    assert killed["new_pid"] is not None, killed  # before: 500 on every request, the old replica kept
    assert killed["new_pid"] != killed["pid"]
    assert killed["answer"]["energy"]["joules"] is not None, killed["answer"]
