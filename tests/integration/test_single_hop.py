"""The single-hop layout (``router.layout: single_hop``) over real HTTP on real Ray Serve: the classifier
runs in the router's replica, the router's checks still apply, and each tag covers that one process
plus the HTTP proxy's part, taken from the node account once (no serving overhead metered beside it)."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import traditional_config

TEXTS = ["Du bist so ein dummer Idiot, halt die Klappe", "Heute scheint in Berlin die Sonne."]


@pytest.fixture(scope="module")
def hop(serve_http: str, demo_artifacts: Path) -> Any:
    from ray import serve

    from serve_app.app import build_app
    from tests.conftest import wait_http

    cfg = traditional_config(demo_artifacts, ["tfidf-logreg"], router={"layout": "single_hop"})
    serve.run(build_app(cfg), name="hop", route_prefix="/hop", blocking=False)
    wait_http(serve_http + "/hop/readyz")
    yield serve_http + "/hop"
    serve.delete("hop")


def test_single_hop_is_one_deployment(hop: str) -> None:
    from ray import serve

    deployments = serve.status().applications["hop"].deployments
    assert sorted(deployments) == ["router"]
    models = httpx.get(f"{hop}/v1/models", timeout=10).json()["models"]
    assert [(m["id"], m["state"]) for m in models] == [("tfidf-logreg", "ready")]


def test_single_hop_keeps_the_routers_checks(hop: str) -> None:
    r = httpx.post(f"{hop}/v1/classify", json={"model": "bow-logreg", "texts": TEXTS}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    r = httpx.post(f"{hop}/v1/classify", json={"model": "tfidf-logreg", "texts": []}, timeout=10)
    assert 400 <= r.status_code < 500 and "error" in r.json()
    r = httpx.post(f"{hop}/v1/classify", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_single_hop_tags_cover_the_process_and_the_proxy_once(hop: str) -> None:
    def one(i: int) -> dict[str, Any]:
        r = httpx.post(f"{hop}/v1/classify", json={"model": "tfidf-logreg", "texts": TEXTS * 4}, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    with cf.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(120)))
    tags = [a["energy"] for a in answers]
    assert all(set(a["labels"]) <= {"OFFENSE", "OTHER"} and len(a["labels"]) == 8 for a in answers)
    for t in tags:
        assert t["joules"] > 0 and "single_hop" in t["flags"] and t["scope"] == "model+serving"
        assert t["model_j"] is None and t["overhead_j"] is None  # not separable within one process
        assert "overhead_not_metered" not in t["flags"]
    view = httpx.get(f"{hop}/v1/energy", timeout=30).json()
    # no second meter on the same process, and that is a state, not an error
    assert view["serving_overhead"]["state"] == "single_hop" and view["serving_overhead"]["error"] is None
    (replica,) = view["deployments"]["tfidf-logreg"]["replicas"].values()
    group = replica["group"]
    assert group.startswith("router:")  # the ingress process: the proxy's part goes to it
    row = next(n["groups"][group] for n in view["nodes"].values() if group in n.get("groups", {}))
    assert row["proxy_part_j"] > 0, row
    # every joule in the tags came from this group's share of the node account, counted once
    assert sum(t["joules"] for t in tags) <= row["j"] + replica.get("pending_j", 0.0) + 1e-6
