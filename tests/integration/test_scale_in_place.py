"""Scaling a classifier in place: `build_app` deployed again with only ``deployment.num_replicas``
changed keeps the running replica and the router (Serve's light-weight update) and adds one replica,
whose answers carry energy tags of its own process's share of the node account. What a replica is
built from (its constructor's arguments, the code, the model's files) is its deployment's version:
a change there restarts it."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import traditional_config, wait_for, wait_http

APP = "scale"
MODEL = "bow-logreg"
TEXTS = ["Du bist so ein dummer Idiot, halt die Klappe", "Heute scheint in Berlin die Sonne."]


def replica_pids(deployment: str, app: str = APP) -> set[int]:
    """PIDs of a deployment's live replica processes (Ray titles them ``ray::ServeReplica:<app>:<dep>``)."""
    tag = f"ServeReplica:{app}:{deployment}"
    out = set()
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if tag in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.add(p.pid)
    return out


def source_digest() -> str:
    """A digest of ``serve_app``'s source (part of each deployment's version)."""
    import serve_app

    root = Path(serve_app.__file__).parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.py")))).hexdigest()


def started(pid: int) -> float:
    return psutil.Process(pid).create_time()


def run(cfg: dict[str, Any]) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(cfg), name=APP, route_prefix=f"/{APP}", blocking=False)


def running_replicas(deployment: str) -> int:
    """Replicas Serve counts RUNNING, once the deployment is HEALTHY (0 before)."""
    from ray import serve

    app = serve.status().applications.get(APP)
    dep = app.deployments.get(deployment) if app else None
    if dep is None or dep.status != "HEALTHY":
        return 0
    return int(dep.replica_states.get("RUNNING", 0))


def replica_pid_of(tag: dict[str, Any]) -> int | None:
    """The replica process a tag's share was metered for (``cpu-process:<pid>`` among its devices)."""
    for d in tag.get("devices", []):
        if d.startswith("cpu-process:"):
            return int(d.split(":")[1])
    return None


@pytest.fixture
def scale_cfg(serve_http: str, demo_artifacts: Any) -> Iterator[tuple[str, dict[str, Any], str]]:
    """The app deployed with one replica: its URL, its config and the digest of the code it runs."""
    from ray import serve

    cfg = traditional_config(demo_artifacts, [MODEL])
    code = source_digest()
    run(cfg)
    url = f"{serve_http}/{APP}"
    wait_http(f"{url}/readyz")
    yield url, cfg, code
    serve.delete(APP)


def versions(cfg: dict[str, Any]) -> dict[str, str]:
    """The version `build_app` gives each deployment of ``cfg`` (Serve restarts a replica whose changes)."""
    from serve_app.app import build_app

    router = build_app(cfg)._bound_deployment
    out = {name: h._bound_deployment.version for name, h in router.init_args[0].items()}
    return {**out, "router": router.version}


def test_versions_change_with_what_replicas_are_built_from(demo_artifacts: Any) -> None:
    base = traditional_config(demo_artifacts, [MODEL])
    v = versions(base)
    assert all(v.values()) and v == versions(copy.deepcopy(base))

    def changed(layout: str = "two_hop", **deployment: Any) -> dict[str, str]:
        cfg = copy.deepcopy({**base, "router": {"layout": layout}})
        cfg["classifiers"][0]["deployment"] = deployment
        return versions(cfg)

    in_place = {"num_replicas": 3, "max_ongoing_requests": 7, "max_queued_requests": 9}
    assert changed(**in_place, health_check_period_s=3, health_check_timeout_s=4) == v
    batching = {"max_batch_size": 4, "batch_wait_timeout_s": 0.1}  # user_config: Serve's `reconfigure`
    assert changed(**batching) == v
    hop = changed("single_hop")  # the router's replicas run the classifier
    assert list(hop) == ["router"] and changed("single_hop", **batching) == hop
    for restart in ({"num_cpus": 0.5}, {"env_vars": {"X": "1"}}):
        new = changed(**restart)
        assert new[MODEL] != v[MODEL] and new["router"] == v["router"], restart
        assert changed("single_hop", **restart) != hop, restart
    assert versions({**base, "router": {"max_ongoing_requests": 9}}) == v
    assert versions({**base, "router": {"max_texts": 9}})["router"] != v["router"]


@pytest.mark.slow
def test_num_replicas_alone_scales_in_place(scale_cfg: tuple[str, dict[str, Any], str]) -> None:
    url, cfg, code = scale_cfg
    (first,) = wait_for(lambda: (p := replica_pids(MODEL)) and len(p) == 1 and p, 60, "one replica")
    (router,) = wait_for(lambda: replica_pids("router"), 30, "the router process")
    born = {first: started(first), router: started(router)}
    body = {"model": MODEL, "texts": TEXTS}
    answer = httpx.post(f"{url}/v1/classify", json=body, timeout=60).json()
    assert replica_pid_of(answer["energy"]) == first

    scaled = copy.deepcopy(cfg)
    scaled["classifiers"][0]["deployment"] = {"num_replicas": 2}
    run(scaled)
    if source_digest() != code:  # a shared checkout edited meanwhile: a new version, restarts by design
        pytest.skip("serve_app's source changed during the test")
    wait_for(lambda: running_replicas(MODEL) == 2, 120, "two RUNNING replicas")
    pids = wait_for(lambda: (p := replica_pids(MODEL)) and len(p) == 2 and p, 60, "two replica processes")
    assert first in pids and started(first) == born[first], "the running replica was restarted"
    assert replica_pids("router") == {router} and started(router) == born[router], "the router restarted"
    (new,) = pids - {first}

    # Both replicas serve; the new one's answers carry energy from its own share of the node account.
    wait_http(f"{url}/readyz")
    seen: dict[int, dict[str, Any]] = {}

    def both_answered() -> bool:
        r = httpx.post(f"{url}/v1/classify", json=body, timeout=60)
        assert r.status_code == 200, r.text
        tag = r.json()["energy"]
        pid = replica_pid_of(tag)
        assert pid in pids, tag
        seen[pid] = tag
        return set(seen) == pids

    wait_for(both_answered, 60, "answers from both replicas")
    tag = seen[new]
    assert tag["source"] != "unavailable" and tag["joules"] is not None, tag
    assert tag["model_j"] is not None and tag["overhead_j"] is not None, tag
    assert tag["replica"] and tag["replica"] != seen[first]["replica"], tag
    assert started(first) == born[first]
