"""Review 4 of the request path over real HTTP on real Ray Serve: each test failed before its fix."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import traditional_config, wait_http

MODEL = "tfidf-logreg"
# 256 texts of 20,000 characters: about a second of TF-IDF on two cores, long enough to cancel mid-call
HEAVY = [f"Die Regierung hat heute das neue Gesetz beschlossen, Nummer {i}. " * 300 for i in range(256)]


@pytest.fixture(scope="module")
def base_url(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from serve_app.app import build_app
    from serve_app.data import load_dataset, make_split
    from serve_app.train import train_split

    artifacts = tmp_path_factory.mktemp("rv4-artifacts")
    ds = load_dataset("demo")
    train_split(make_split(ds, 120, 20, seed=1, index=0), [MODEL], Path(artifacts), ds.labels, ds.source)
    cfg = traditional_config(
        artifacts, [MODEL], router={"max_body_bytes": 8_000_000, "max_text_chars": 20_000}
    )
    serve.run(build_app(cfg), name="rv4", route_prefix="/rv4", blocking=False)
    wait_http(serve_http + "/rv4/readyz")
    yield serve_http + "/rv4"
    serve.delete("rv4")


def _counts(view: dict) -> tuple[int, int]:
    """(requests served, requests open) over the classifier's live replicas in a ``/v1/energy`` view."""
    live = [r for r in view["deployments"][MODEL]["replicas"].values() if not r["stale"]]
    return sum(r["requests"] for r in live), sum(r["open_requests"] for r in live)


def _replica_counts(base_url: str) -> tuple[int, int]:
    return _counts(httpx.get(f"{base_url}/v1/energy", timeout=30).json())


def test_a_retry_after_the_first_client_went_away_gets_the_one_classification(base_url: str) -> None:
    """The idempotency contract: the classification of a request with a ``request_id`` goes on when
    its first client goes away, and the retry gets that answer (``replayed``), classified and metered
    once. Serve cancelled the replica call with the first client's request (it tracks handle calls by
    the request's context, which the cache's task inherited), so the retry classified again."""
    body = {"model": MODEL, "texts": HEAVY, "request_id": "rv4-" + uuid.uuid4().hex}
    served_before, _ = _replica_counts(base_url)

    async def first_client_goes_away() -> None:
        async with httpx.AsyncClient(timeout=60) as client, httpx.AsyncClient(timeout=30) as probe:
            first = asyncio.ensure_future(client.post(f"{base_url}/v1/classify", json=body))
            deadline = time.monotonic() + 30
            while _counts((await probe.get(f"{base_url}/v1/energy")).json())[1] == 0:  # being classified
                assert time.monotonic() < deadline and not first.done(), "never saw the call open"
                await asyncio.sleep(0.02)
            first.cancel()  # the client disconnects mid-call
            with pytest.raises(asyncio.CancelledError):
                await first

    asyncio.run(first_client_goes_away())
    retry = httpx.post(f"{base_url}/v1/classify", json=body, timeout=60)
    assert retry.status_code == 200, retry.text[:300]
    answer = retry.json()
    assert answer["replayed"] is True
    assert len(answer["labels"]) == len(HEAVY)
    tag = answer["energy"]  # the router never measured this answer's serving overhead: it says so
    assert tag["joules"] == tag["model_j"] and tag["overhead_j"] is None
    assert "overhead_not_metered" in tag["flags"], tag
    again = httpx.post(f"{base_url}/v1/classify", json=body, timeout=60).json()
    assert again["replayed"] is True and again["energy"] == tag
    served_after, open_after = _replica_counts(base_url)
    assert served_after - served_before == 1 and open_after == 0
