"""SmolLM2-135M-Instruct through the whole Serve app over HTTP: router, deployment wrapper, vLLM
engine in the replica, all three modes, energy tags with token-weighted attribution."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.llm.conftest import cpu_spec


def wait_model(base: str, model_id: str, timeout_s: float = 900.0) -> dict[str, Any]:
    """Poll /v1/models until the LLM replica answers (its engine takes a while to start)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(base + "/v1/models", timeout=60)
            last = r.status_code
            if r.status_code == 200:
                models = {m["id"]: m for m in r.json()["models"]}
                if model_id in models:
                    return models[model_id]
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(2)
    raise TimeoutError(f"{model_id} not up within {timeout_s} s (last: {last})")


@pytest.mark.timeout(1500)
def test_llm_over_http(serve_app_factory: Any, smollm2_dir: Path) -> None:
    spec = cpu_spec(
        str(smollm2_dir),
        id="smollm2",
        max_model_len=2048,
        paper_max_tokens=48,
        deployment={"num_cpus": 0.5},
        energy={"meter": "estimate"},
    )
    base = serve_app_factory({"classifiers": [spec]})
    model = wait_model(base, "smollm2")
    assert model["kind"] == "llm" and model["modes"] == ["paper", "choice", "score"]
    assert model["labels"] == ["positive", "negative"] and model["parameters"] > 100_000_000
    (worker,) = model["details"]["workers"]  # asked of the engine when the replica started
    assert worker["rank"] == 0 and worker["device"] == "cpu" and worker["gpu"] is None

    with httpx.Client(timeout=300) as client:
        for mode in ("choice", "score", "paper"):
            r = client.post(
                base + "/v1/classify",
                json={
                    "model": "smollm2",
                    "texts": ["a fine, moving film", "a dreadful, dull film"],
                    "mode": mode,
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            preds = body["predictions"]
            assert len(preds) == 2 and all(p["prompt_tokens"] > 50 for p in preds)
            if mode != "paper":
                assert all(label in ("positive", "negative") for label in body["labels"])
            else:  # the study's parser: a label, or an unparsed answer marked as such
                assert all(
                    (p["parsed"] and p["label"] in ("positive", "negative"))
                    or (not p["parsed"] and p["label"] == "")
                    for p in preds
                )
            if mode == "score":
                assert set(preds[0]["scores"]) == {"positive", "negative"}
                assert all(p["generated_tokens"] == 1 for p in preds)
            energy = body["energy"]
            assert energy["source"] == "estimate" and energy["joules"] > 0
            assert energy["attribution"]["rule"] == "tokens"
            work = energy["attribution"]["tokens"]  # the engine's steps, as the ledger weighted them
            assert work["prompt_tokens"] == sum(p["prompt_tokens"] for p in preds)
            assert work["generated_tokens"] == sum(p["generated_tokens"] for p in preds)
            assert 0 < work["prefill_tokens"] <= work["prompt_tokens"]
            assert work["decode_tokens"] == work["generated_tokens"] - len(preds)
            parts = work["prefill_j"] + work["decode_j"] + work["unstepped_j"]
            # the engine's steps split the model's share; joules adds the serving overhead
            assert parts == pytest.approx(energy["model_j"], rel=1e-6)
            assert energy["joules"] == pytest.approx(energy["model_j"] + (energy["overhead_j"] or 0.0))
            if mode == "paper":
                assert work["generated_tokens"] > len(preds) and work["decode_j"] >= 0
            assert "gpus_not_metered" not in energy["flags"]
            assert r.headers["X-Energy-Source"] == "estimate"

        r = client.post(base + "/v1/classify", json={"model": "smollm2", "text": "ok", "mode": "fast"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_mode"
        r = client.post(base + "/v1/classify", json={"model": "smollm2", "text": "ok"})  # default mode
        assert r.status_code == 200 and r.json()["predictions"][0]["scores"] is None
