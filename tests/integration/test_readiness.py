"""Readiness over HTTP with traditional models on real Serve: ``/readyz`` turns 200 only once every
classifier is ready, ``/v1/models`` answers at once and shows each one's ``state``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from serve_app.replay.ready import wait_ready_sync
from tests.conftest import traditional_config, wait_http

MODELS = ["tfidf-logreg", "embedding-logreg"]


def test_ready_path_with_traditional_models(serve_http: str, demo_artifacts: Path) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(
        build_app(traditional_config(demo_artifacts, MODELS)),
        name="ready",
        route_prefix="/ready",
        blocking=False,
    )
    base = serve_http + "/ready"
    try:
        wait_http(base + "/healthz")
        seen: list[tuple[int, dict[str, str]]] = []
        deadline = time.monotonic() + 180
        with httpx.Client(timeout=30, trust_env=False) as c:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                models = c.get(base + "/v1/models")
                models_s = time.perf_counter() - t0
                assert models.status_code == 200 and models_s < 1.0, (models.status_code, models_s)
                states = {m["id"]: m["state"] for m in models.json()["models"]}
                assert set(states) == set(MODELS) and set(states.values()) <= {"loading", "ready"}
                ready = c.get(base + "/readyz")
                seen.append((ready.status_code, states))
                if ready.status_code == 200:
                    break
                body = ready.json()
                assert ready.status_code == 503 and body["error"]["code"] == "not_ready"
                assert ready.headers["retry-after"] and set(body["not_ready"]) <= set(MODELS)
                assert body["not_ready"], "503 must name a classifier that is not ready"
                time.sleep(0.2)
            assert seen and seen[-1][0] == 200, seen[-3:]
            assert ready.json() == {"status": "ready", "not_ready": {}}
            listed = {m["id"]: m for m in c.get(base + "/v1/models").json()["models"]}
            for m in MODELS:
                entry: dict[str, Any] = listed[m]
                assert entry["state"] == "ready" and entry["reason"] is None
                assert entry["serve_status"] == "HEALTHY" and entry["labels"] == ["OFFENSE", "OTHER"]
                r = c.post(base + "/v1/classify", json={"model": m, "texts": ["Das ist gut"]})
                assert r.status_code == 200 and r.json()["labels"][0] in ("OFFENSE", "OTHER"), r.text
        wait_ready_sync(base, timeout_s=5)  # the replay driver's wait returns at once on a ready app
    finally:
        serve.delete("ready")
