"""Replica lifecycle on real Serve (review 5): a replica that Serve stops (a redeploy, the app deleted)
writes its final energy snapshot to the registry marked ``stopped``, so ``GET /v1/energy`` and the
registry show it ``stale`` at once (not 10 s later, as if it still answered) with its energy and
requests up to the stop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app import registry
from tests.conftest import wait_for, wait_http

MODEL = "tfidf-logreg"
APP = "lc5"


@pytest.fixture(scope="module")
def tfidf_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serve_app.data import load_dataset, make_split
    from serve_app.train import train_split

    out = tmp_path_factory.mktemp("lc5-artifacts")
    ds = load_dataset("demo")
    train_split(make_split(ds, 200, 100, 7, 0), [MODEL], out, ds.labels, ds.source)
    return out


def config(artifacts: Path, replicas: int, num_cpus: float = 0.25) -> dict[str, Any]:
    deployment = {"num_replicas": replicas, "num_cpus": num_cpus}
    return {
        "artifacts_dir": str(artifacts),
        "classifiers": [{"kind": "traditional", "id": MODEL, "deployment": deployment}],
    }


def wait_ready(base: str) -> None:
    wait_http(base + "/healthz")
    wait_for(lambda: httpx.get(base + "/readyz", timeout=10).status_code == 200, 180, "/readyz 200")


def replicas_view(base: str) -> dict[str, Any]:
    body = httpx.get(base + "/v1/energy", timeout=30).json()
    return dict(body["deployments"][MODEL]["replicas"])


def registered() -> dict[str, dict[str, Any]]:
    return asyncio.run(registry.get(APP, 5.0)).get(MODEL, {})


def test_stopped_replicas_are_stale_at_once_with_their_final_energy(
    serve_http: str, tfidf_artifacts: Path
) -> None:
    from ray import serve

    from serve_app.app import build_app

    base = serve_http + "/" + APP
    serve.run(build_app(config(tfidf_artifacts, 2)), name=APP, route_prefix="/" + APP, blocking=False)
    try:
        wait_ready(base)
        # both replicas metered and shown, each with its own node-account group
        first = wait_for(
            lambda: (r := registered()) and len(r) == 2 and all(not s["stale"] for s in r.values()) and r,
            60,
            "both replicas' first reports",
        )
        shown = replicas_view(base)
        assert set(first) <= set(shown) and all(shown[r]["stale"] is False for r in first), shown
        assert len({shown[r].get("group") for r in first}) == 2, shown

        # a redeploy of another version stops both (the CPUs are a Ray actor option; a change of
        # num_replicas or of the batching alone would update them in place): right after the new
        # version is ready, their snapshots are kept and marked stale
        redeploy = config(tfidf_artifacts, 1, num_cpus=0.3)
        serve.run(build_app(redeploy), name=APP, route_prefix="/" + APP, blocking=False)
        wait_for(lambda: not set(registered()) <= set(first), 180, "the new replica's first report")
        wait_ready(base)
        old = {r: s for r, s in registered().items() if r in first}
        assert set(old) == set(first) and all(s["stale"] is True for s in old.values()), old
        assert all(s.get("stopped") is True for s in old.values()), old
        for rep, snap in old.items():  # the final snapshot is at least the last periodic one
            assert snap["metered_j"] >= first[rep]["metered_j"] and snap["readings"] >= first[rep]["readings"]
        shown = replicas_view(base)
        assert all(shown[r]["stale"] is True for r in first), shown
        (new,) = set(registered()) - set(first)

        texts = ["Das ist gut", "Du Idiot"]
        for _ in range(3):
            r = httpx.post(base + "/v1/classify", json={"model": MODEL, "texts": texts}, timeout=60)
            assert r.status_code == 200, r.text
    finally:
        serve.delete(APP)
    # the deleted app's replica: stale at once, its requests up to the stop all counted
    last = registered()
    assert last[new]["stale"] is True and last[new]["requests"] == 3, last[new]


def test_a_single_hop_routers_hosted_classifier_stops_with_it(serve_http: str, tfidf_artifacts: Path) -> None:
    """In the single-hop layout the classifier lives in the router's replica; Serve's shutdown calls the
    router's ``__del__`` only, so the hosted classifier (engine, meter, export) was never closed and its
    registry entry read as live after the app was deleted."""
    from ray import serve

    from serve_app.app import build_app

    app = APP + "hop"
    cfg = {**config(tfidf_artifacts, 1), "router": {"layout": "single_hop"}}
    base = serve_http + "/" + app
    serve.run(build_app(cfg), name=app, route_prefix="/" + app, blocking=False)
    try:
        wait_ready(base)
        mine = wait_for(
            lambda: asyncio.run(registry.get(app, 5.0)).get(MODEL), 60, "the hosted replica's report"
        )
        r = httpx.post(base + "/v1/classify", json={"model": MODEL, "texts": ["Das ist gut"]}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        serve.delete(app)
    last = asyncio.run(registry.get(app, 5.0)).get(MODEL, {})
    assert set(last) == set(mine) and all(s.get("stopped") is True and s["stale"] for s in last.values()), (
        last
    )
