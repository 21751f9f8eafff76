"""Readiness during a real LLM load: a tiny random Llama on vLLM for CPU behind the router. The engine
takes tens of seconds to start in the replica's constructor; meanwhile the router must answer."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_http
from tests.llm.conftest import cpu_spec

MODEL = "tiny-llm"


@pytest.mark.timeout(1200)
def test_models_readyz_and_classify_during_llm_load(serve_http: str, tiny_model_dir: Path) -> None:
    from ray import serve

    from serve_app.app import build_app

    spec = cpu_spec(str(tiny_model_dir), deployment={"num_cpus": 0.5}, energy={"meter": "estimate"})
    serve.run(build_app({"classifiers": [spec]}), name="llmready", route_prefix="/llmready", blocking=False)
    base = serve_http + "/llmready"
    try:
        wait_http(base + "/healthz", timeout_s=300)
        loading_seen = 0
        deadline = time.monotonic() + 900
        with httpx.Client(timeout=30, trust_env=False) as c:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                models = c.get(base + "/v1/models")
                models_s = time.perf_counter() - t0
                assert models.status_code == 200 and models_s < 1.0, (models.status_code, models_s)
                (entry,) = models.json()["models"]
                assert entry["id"] == MODEL and entry["state"] in ("loading", "ready"), entry
                ready = c.get(base + "/readyz")
                if ready.status_code == 200:
                    break
                assert ready.status_code == 503 and ready.json()["not_ready"][MODEL]["state"] == "loading"
                if entry["state"] == "loading":
                    loading_seen += 1
                    r = c.post(base + "/v1/classify", json={"model": MODEL, "texts": ["a fine film"]})
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "model_loading" and int(r.headers["retry-after"]) > 0
                    assert r.json()["error"]["field"] == "model"
                time.sleep(0.5)
            assert ready.status_code == 200, ready.text
            # loading was observed over HTTP, with the router answering, before readiness
            assert loading_seen >= 3, loading_seen
            (entry,) = c.get(base + "/v1/models").json()["models"]
            assert entry["state"] == "ready" and entry["labels"] == ["positive", "negative"]
            r = c.post(
                base + "/v1/classify", json={"model": MODEL, "texts": ["a fine film"], "mode": "score"}
            )
            assert r.status_code == 200 and r.json()["labels"][0] in ("positive", "negative"), r.text
    finally:
        serve.delete("llmready")
