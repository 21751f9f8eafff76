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
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serve_app.data import load_dataset, make_split
    from serve_app.train import train_split

    folder = tmp_path_factory.mktemp("rv4-artifacts")
    ds = load_dataset("demo")
    train_split(make_split(ds, 120, 20, seed=1, index=0), [MODEL], folder, ds.labels, ds.source)
    return folder


def _deploy(serve_http: str, artifacts: Path, name: str, **router: object) -> str:
    from ray import serve

    from serve_app.app import build_app

    cfg = traditional_config(
        artifacts, [MODEL], router={"max_body_bytes": 8_000_000, "max_text_chars": 20_000, **router}
    )
    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}", blocking=False)
    wait_http(f"{serve_http}/{name}/readyz")
    return f"{serve_http}/{name}"


@pytest.fixture(scope="module")
def base_url(serve_http: str, artifacts: Path) -> Iterator[str]:
    from ray import serve

    yield _deploy(serve_http, artifacts, "rv4")
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


def test_classifications_whose_clients_went_away_count_against_max_inflight(
    serve_http: str, artifacts: Path
) -> None:
    """An idempotent classification goes on after its client went away (its retry gets the answer), so
    it holds the router's memory (its texts) and the replica's time while no request is in flight: with
    ``max_inflight`` 2, two such calls fill the router (503 ``overloaded``) until they are done; their
    retries are answered from the cache once they are. Before, the router counted only requests whose
    clients were still there, so a client that sends and leaves could pile up work without bound."""
    from ray import serve

    url = _deploy(serve_http, artifacts, "rv4cap", max_inflight=2)
    bodies = [{"model": MODEL, "texts": HEAVY, "request_id": "cap-" + uuid.uuid4().hex} for _ in range(2)]
    try:

        async def send_and_leave() -> tuple[int, str]:
            async with httpx.AsyncClient(timeout=60) as client, httpx.AsyncClient(timeout=30) as probe:
                sent = [asyncio.ensure_future(client.post(f"{url}/v1/classify", json=b)) for b in bodies]
                deadline = time.monotonic() + 30
                while _counts((await probe.get(f"{url}/v1/energy")).json())[1] == 0:  # being classified
                    assert time.monotonic() < deadline, "never saw a call open"
                    await asyncio.sleep(0.02)
                for s in sent:
                    s.cancel()  # both clients disconnect mid-call
                await asyncio.gather(*sent, return_exceptions=True)
                await asyncio.sleep(0.2)  # the router's handlers see the disconnects
                third = await probe.post(f"{url}/v1/classify", json={"model": MODEL, "texts": ["kurz"]})
                return third.status_code, third.json()["error"]["code"] if third.status_code != 200 else ""

        assert asyncio.run(send_and_leave()) == (503, "overloaded")
        deadline = time.monotonic() + 120
        while True:  # once the two are done, the router takes requests again
            r = httpx.post(f"{url}/v1/classify", json={"model": MODEL, "texts": ["kurz"]}, timeout=30)
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text[:300]
            assert time.monotonic() < deadline, "the router stayed full"
            time.sleep(0.2)
        for b in bodies:
            again = httpx.post(f"{url}/v1/classify", json=b, timeout=60)
            assert again.status_code == 200 and again.json()["replayed"] is True
    finally:
        serve.delete("rv4cap")
