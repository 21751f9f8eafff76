"""Changing a classifier's batching in place: `build_app` deployed again with only
``deployment.max_batch_size`` and ``batch_wait_timeout_s`` changed keeps the running replica and the
router (the settings are the deployment's ``user_config``, which Serve hands to the replica's
``reconfigure``), and the replica's row of ``GET /v1/energy`` shows the new settings in effect. The same
in the single-hop layout, where the router's replica runs the classifier. A ``user_config`` set by hand
in a Serve config file is checked by name."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import traditional_config, wait_for, wait_http
from tests.integration.test_scale_in_place import TEXTS, replica_pid_of, replica_pids, source_digest, started

APP = "batching"
MODEL = "bow-logreg"
FIRST = {"max_batch_size": 3, "batch_wait_timeout_s": 0.002}
CHANGED = {"max_batch_size": 7, "batch_wait_timeout_s": 0.02}


def deploy(cfg: dict[str, Any]) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(cfg), name=APP, route_prefix=f"/{APP}", blocking=False)


def batching_shown(url: str) -> Any:
    """The batching the classifier's live replica says it applies (its row of ``GET /v1/energy``)."""
    view = httpx.get(f"{url}/v1/energy", timeout=30).json()
    live = [r for r in view["deployments"][MODEL]["replicas"].values() if not r["stale"]]
    return live[0].get("batching") if len(live) == 1 else None


@pytest.fixture
def app_url(serve_http: str) -> Iterator[str]:
    from ray import serve

    yield f"{serve_http}/{APP}"
    serve.delete(APP)


@pytest.mark.parametrize("layout", ["two_hop", "single_hop"])
def test_batching_changes_keep_the_replicas(layout: str, app_url: str, demo_artifacts: Path) -> None:
    cfg = traditional_config(demo_artifacts, [MODEL], router={"layout": layout})
    cfg["classifiers"][0]["deployment"] = FIRST
    code = source_digest()
    deploy(cfg)
    wait_http(f"{app_url}/readyz")
    # the processes: the classifier's replica and the router (single hop: one, running both)
    names = ["router"] if layout == "single_hop" else [MODEL, "router"]
    pids = {n: wait_for(lambda n=n: (p := replica_pids(n, APP)) and len(p) == 1 and p, 60, n) for n in names}
    born = {pid: started(pid) for (pid,) in pids.values()}
    first_shown = batching_shown(app_url)

    changed = copy.deepcopy(cfg)
    changed["classifiers"][0]["deployment"] = CHANGED
    deploy(changed)  # returns once Serve runs the new version: a restart would show new processes now
    if source_digest() != code:  # a shared checkout edited meanwhile: a new version, restarts by design
        pytest.skip("serve_app's source changed during the test")
    for name, (pid,) in pids.items():
        assert replica_pids(name, APP) == {pid} and started(pid) == born[pid], f"{name} restarted"
    assert first_shown == FIRST  # applied before the replica served (not the defaults)
    wait_for(lambda: batching_shown(app_url) == CHANGED, 60, "the new batching in effect")

    r = httpx.post(f"{app_url}/v1/classify", json={"model": MODEL, "texts": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    assert replica_pid_of(r.json()["energy"]) == next(iter(pids[names[0]]))  # the same replica answers
    assert all(started(pid) == t for pid, t in born.items())


def test_a_user_config_keeps_the_defaults_it_leaves_out() -> None:
    from serve_app.config_common import BatchingOptions

    options = BatchingOptions.from_user_config({"max_batch_size": 8})
    assert options.max_batch_size == 8 and options.batch_wait_timeout_s == 0.005


@pytest.mark.parametrize(
    ("user_config", "named"),
    [
        ({"max_batch_sise": 8}, "max_batch_sise: Extra inputs are not permitted"),
        ({"max_batch_size": 0}, "max_batch_size: Input should be greater than or equal to 1"),
        ({"max_batch_size": "many"}, "max_batch_size: Input should be a valid integer"),
        ({"batch_wait_timeout_s": -1}, "batch_wait_timeout_s: Input should be greater than or equal to 0"),
        ({"batch_wait_timeout_s": float("inf")}, "batch_wait_timeout_s: Input should be a finite number"),
        ([8], "user_config: Input should be a valid dictionary"),
    ],
)
def test_a_bad_user_config_is_refused_by_name(user_config: Any, named: str) -> None:
    """What a Serve config file's ``deployments:`` list sets as ``user_config`` reaches ``reconfigure``
    unchecked by Serve: the replica refuses it, naming the key and what it takes."""
    from serve_app.config_common import BatchingOptions

    with pytest.raises(ValueError) as err:
        BatchingOptions.from_user_config(user_config)
    assert named in str(err.value), err.value
    assert "takes max_batch_size and batch_wait_timeout_s only" in str(err.value), err.value
