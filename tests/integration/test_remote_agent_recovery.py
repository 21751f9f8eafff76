"""Another node's energy agent dies under a replica whose work spans nodes (a pipeline classifier's
feature stage on worker-1, its head on the head node): the replica's ``MultiNodeMeter`` gets or starts
worker-1's agent again and watches its group there again, so that tags carry worker-1's part again
within a bounded time; the answers in between say so (``unavailable``, or flagged) instead of carrying
energy nobody metered, and worker-1's figures after stay within what that node can draw.

Two Ray nodes on one machine (the local launcher), run in a subprocess as in
``test_cluster_two_nodes.py`` (its own Ray driver). The agent is killed with SIGKILL, by the PID it
gives itself (``where``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.scenario import (
    REPO,
    loopback_driver,
    run_scenario,
    spanning_pipeline,
    trained_demo,
    two_nodes,
    wait_200,
)

MODEL = "tfidf-logreg-2nodes"
RECOVERY_S = 40.0
LAG_S = 2.1  # a late remote counter's staleness bound: poll period (0.1 s) + RPC timeout (2 s)
GAP_FLAGS = {"meter_gap", "remote_counters_late"}
pytestmark = pytest.mark.slow


def _scenario(out_path: str) -> None:  # runs in the subprocess
    loopback_driver()
    import signal
    import threading
    import time

    import httpx
    import ray
    from ray import serve
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from serve_app.app import build_app
    from serve_app.energy.agents import AGENT_NAMESPACE, AGENT_PREFIX

    art, texts = trained_demo(["tfidf-logreg"])
    texts = texts[:16]
    result: dict[str, Any] = {}
    with two_nodes("accuwatt-remote-agent") as base:
        spanning = spanning_pipeline(MODEL)
        serve.run(
            build_app(
                {
                    "artifacts_dir": str(art),
                    "router": {"resources": {"node:head": 0.01}},
                    "classifiers": [spanning],
                }
            ),
            name="accuwatt",
            route_prefix="/",
            blocking=False,
        )
        worker_id = next(
            str(n["NodeID"]) for n in ray.nodes() if n.get("Alive") and "node:worker-1" in n["Resources"]
        )

        @ray.remote(num_cpus=0)
        def code_file() -> str:  # which serve_app the cluster's workers import (the copy under test)
            import serve_app.energy.agents as agents

            return str(agents.__file__)

        strategy = NodeAffinitySchedulingStrategy(worker_id, soft=False)
        result["code_file"] = ray.get(code_file.options(scheduling_strategy=strategy).remote(), timeout=120)

        def agent_where() -> dict[str, Any]:
            agent = ray.get_actor(AGENT_PREFIX + worker_id, namespace=AGENT_NAMESPACE)
            return dict(ray.get(agent.where.remote(), timeout=30))

        with httpx.Client(timeout=60, trust_env=False) as c:
            wait_200(c, base + "/readyz")
            result["models"] = c.get(base + "/v1/models").json()
            result["before"] = [
                c.post(base + "/v1/classify", json={"model": MODEL, "text": t}).json() for t in texts[:6]
            ]
            old = agent_where()
            result["old_agent"] = old
            answers: list[dict[str, Any]] = []
            stop = threading.Event()

            def load() -> None:
                with httpx.Client(timeout=60, trust_env=False) as lc:
                    i = 0
                    while not stop.is_set():
                        sent = time.monotonic()
                        r = lc.post(
                            base + "/v1/classify", json={"model": MODEL, "text": texts[i % len(texts)]}
                        )
                        done = time.monotonic()
                        body = r.json() if r.status_code == 200 else {}
                        answers.append({"sent": sent, "done": done, "status": r.status_code, **body})
                        i += 1
                        time.sleep(0.05)

            thread = threading.Thread(target=load, daemon=True)
            thread.start()
            try:
                time.sleep(2.0)
                assert old["node"] == "worker-1" and old["node_id"] == worker_id, old
                killed_s = time.monotonic()
                os.kill(int(old["pid"]), signal.SIGKILL)  # worker-1's agent, as it said itself
                result["killed_s"] = killed_s
                deadline = killed_s + RECOVERY_S + 5
                while time.monotonic() < deadline and _recovered_at(answers, killed_s) is None:
                    time.sleep(0.25)
                time.sleep(5.0)  # answers after recovery
            finally:
                stop.set()
                thread.join(70)
            result["answers"] = list(answers)
            try:
                result["new_agent"] = agent_where()
            except Exception as exc:  # no agent: the recovery assertions say why
                result["new_agent"] = {"error": repr(exc)}
            time.sleep(2.5)  # two export periods: /v1/energy snapshots are current
            result["energy"] = c.get(base + "/v1/energy").json()
        serve.shutdown()
    Path(out_path).write_text(json.dumps(result, default=str))


def _worker_j(tag: dict[str, Any]) -> float | None:
    """worker-1's part of a tag's joules (None: the tag has none)."""
    value = (tag.get("nodes_j") or {}).get("worker-1")
    return None if value is None else float(value)


def _recovered_at(answers: list[dict[str, Any]], killed_s: float) -> float | None:
    """When the first answer sent after the kill and after an answer without energy was sent that
    carries worker-1's part again, unflagged (None: none yet)."""
    gap_seen = False
    for a in list(answers):
        if a["sent"] <= killed_s:
            continue
        tag = a.get("energy") or {}
        if tag.get("joules") is None:
            gap_seen = True
        elif gap_seen and (_worker_j(tag) or 0.0) > 0 and not GAP_FLAGS & set(tag.get("flags", ())):
            return float(a["sent"])
    return None


@pytest.fixture(scope="module")
def recovery_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("remote-agent") / "result.json"
    return run_scenario("tests.integration.test_remote_agent_recovery", out)


def _worker_most_w() -> float:
    """worker-1's most power: the estimate's TDP and all of the memory (both nodes are this machine:
    MemTotal read here) x W/GB, as ``test_cluster_two_nodes.py`` bounds each node's counters."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_gb = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) * 1024 / 1e9
    return 65.0 + mem_gb * 0.375


def _within_bound(a: dict[str, Any], most_w: float) -> None:
    """worker-1's part lies between 0 and what worker-1 can draw while the request was out (both ends of
    the window wait for worker-1's counters asked for then; a late end holds values up to ``LAG_S`` old)."""
    tag = a["energy"]
    late = "remote_counters_late" in tag["flags"]
    most_j = most_w * (a["done"] - a["sent"] + (LAG_S if late else 0.0))
    assert 0.0 <= (_worker_j(tag) or 0.0) <= most_j, (a["done"] - a["sent"], most_j, tag)


def test_a_dead_remote_agent_is_replaced(recovery_result: dict[str, Any]) -> None:
    res = recovery_result
    # the cluster's workers ran the code under test (this file's checkout)
    assert Path(res["code_file"]).resolve().is_relative_to(REPO), res["code_file"]
    for a in res["before"]:  # before the kill, every answer had worker-1's part
        assert (_worker_j(a["energy"]) or 0.0) > 0, a["energy"]
    killed_s = res["killed_s"]
    answers = res["answers"]
    assert all(a["status"] == 200 for a in answers), [a["status"] for a in answers]
    recovered_s = _recovered_at(answers, killed_s)
    after = [a for a in answers if a["sent"] > killed_s]
    assert recovered_s is not None, [
        (
            round(a["sent"] - killed_s, 2),
            a["energy"]["joules"],
            a["energy"]["nodes_j"],
            a["energy"]["flags"][:2],
        )
        for a in after[-8:]
    ]
    assert recovered_s - killed_s <= RECOVERY_S, recovered_s - killed_s
    # a new agent on worker-1 (another process)
    new = res["new_agent"]
    assert new.get("node") == "worker-1" and new["pid"] != res["old_agent"]["pid"], new
    most_w = _worker_most_w()

    # while it was gone: no energy, or energy flagged for what it lacks, never beyond worker-1's bound
    gap = [a for a in after if a["sent"] < recovered_s]
    assert any(a["energy"]["joules"] is None for a in gap)
    for a in gap:
        tag = a["energy"]
        if tag["joules"] is None:
            assert tag["source"] == "unavailable" and tag["measured"] is False, tag
        else:
            assert GAP_FLAGS & set(tag["flags"]), tag
            _within_bound(a, most_w)

    # after recovery: every answer has energy and worker-1's part, within worker-1's bound
    later = [a for a in after if a["sent"] >= recovered_s]
    assert len(later) >= 5, len(later)
    for a in later:
        tag = a["energy"]
        assert tag["joules"] is not None and "meter_gap" not in tag["flags"], tag
        assert _worker_j(tag) is not None, tag
        _within_bound(a, most_w)
    assert sum((_worker_j(a["energy"]) or 0.0) > 0 for a in later) >= 0.8 * len(later), [
        a["energy"]["nodes_j"] for a in later
    ]

    # nothing of the old agent counted again: worker-1's parts after recovery are no more than the
    # replica's group holds in worker-1's new node account (started after the kill), up to what the
    # replica's meter showed beyond it at the last poll
    (rep,) = res["energy"]["deployments"][MODEL]["replicas"].values()
    group = rep["remote_groups"]["worker-1"]
    account = res["energy"]["nodes"]["worker-1"]
    assert account["window_s"][0] > killed_s, (account["window_s"], killed_s)
    held = account["groups"][group]
    assert held["kind"] == "replica" and held["cpu_s"] > 0, held
    later_j = sum(_worker_j(a["energy"]) or 0.0 for a in later)
    bound = held["j"] + max(rep["remote_pending_j"]["worker-1"], 0.0) + 1e-9
    assert 0 < later_j <= bound, (later_j, held, rep["remote_pending_j"])
    print(
        f"\nworker-1 agent {res['old_agent']['pid']} killed; {len(gap)} answers before recovery "
        f"({sum(a['energy']['joules'] is None for a in gap)} unavailable); worker-1's part again after "
        f"{recovered_s - killed_s:.1f} s (new agent {new['pid']}); {len(later)} answers after: worker-1 "
        f"{later_j:.3f} J of the new account group's {held['j']:.3f} J"
    )
