"""Back-pressure over real HTTP: about twice the sustainable rate for a bounded time. The service
sheds the excess with 503 + ``Retry-After`` (bounded queues: ``max_ongoing_requests`` and
``max_queued_requests``), accepted requests complete, the processes' memory stays bounded, and
normal requests succeed afterwards."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import traditional_config, wait_http

pytestmark = pytest.mark.slow
MODEL = "tfidf-xgboost"
TEXTS = [
    "Du bist so ein dummer Idiot, halt die Klappe",
    "Heute scheint in Berlin die Sonne.",
    "Die Regierung hat das Gesetz beschlossen.",
    "Was für ein widerlicher Haufen Lügner.",
] * 16
OVERLOAD_S = 20.0
MAX_REQUESTS = 4000
RSS_GROWTH_LIMIT_MB = 150.0


def serve_pids(app: str) -> dict[str, int]:
    """The router, classifier replica and HTTP proxy processes, by role."""
    out = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if f"ServeReplica:{app}:router" in cmd:
            out["router"] = p.pid
        elif f"ServeReplica:{app}:{MODEL}" in cmd:
            out["classifier"] = p.pid
        elif "ProxyActor" in cmd:
            out["proxy"] = p.pid
    return out


def rss_mb(pids: dict[str, int]) -> dict[str, float]:
    return {role: psutil.Process(pid).memory_info().rss / 2**20 for role, pid in pids.items()}


@pytest.fixture(scope="module")
def base_url(serve_http: str, demo_artifacts: Any) -> Iterator[str]:
    from ray import serve

    from serve_app.app import build_app

    # Every queue bounded, the router's too: its ``max_inflight`` (default 256) is what a request can
    # wait behind when the router itself is the bottleneck (2 cores: router, proxy and replica share
    # them), 256 / ~20 rps ~ 13 s here. The bound under test is the configured one.
    cfg = traditional_config(demo_artifacts, [MODEL], router={"max_inflight": 32})
    cfg["classifiers"][0]["deployment"] = {
        "max_ongoing_requests": 2,
        "max_queued_requests": 4,
        "max_batch_size": 2,
    }
    serve.run(build_app(cfg), name="overload", route_prefix="/overload", blocking=False)
    wait_http(serve_http + "/overload/readyz")
    yield serve_http + "/overload"
    serve.delete("overload")


async def _one(client: httpx.AsyncClient, url: str, out: list[tuple[int, float, dict[str, Any]]]) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post(url, json={"model": MODEL, "texts": TEXTS})
        status, info = r.status_code, {"retry_after": r.headers.get("retry-after")}
        if status != 200:
            info["code"] = r.json()["error"]["code"]
        else:  # the router's own time for it: from its admission to its answer
            info["router_s"] = r.json()["latency_s"]
    except httpx.HTTPError as exc:
        status, info = 0, {"code": type(exc).__name__}
    out.append((status, time.perf_counter() - t0, info))


async def closed_loop(url: str, concurrency: int, duration_s: float) -> float:
    """Requests per second the service completes with ``concurrency`` clients (a few sheds allowed)."""
    out: list[tuple[int, float, dict[str, Any]]] = []
    async with httpx.AsyncClient(timeout=60) as client:
        end = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < end:
                await _one(client, url, out)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    assert {s for s, _, _ in out} <= {200, 503}, Counter(s for s, _, _ in out)
    return sum(s == 200 for s, _, _ in out) / elapsed


async def open_loop(
    url: str, rate_rps: float, duration_s: float
) -> tuple[list[tuple[int, float, dict[str, Any]]], float]:
    out: list[tuple[int, float, dict[str, Any]]] = []
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = []
        t0 = time.perf_counter()
        n = min(MAX_REQUESTS, int(rate_rps * duration_s))
        for i in range(n):
            delay = t0 + i / rate_rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, url, out)))
        offered_s = time.perf_counter() - t0
        await asyncio.gather(*tasks)
    return out, offered_s


def test_twice_the_sustainable_rate_is_shed_and_recovered(base_url: str) -> None:
    url = f"{base_url}/v1/classify"
    asyncio.run(closed_loop(url, 4, 2.0))  # warm-up
    sustainable = asyncio.run(closed_loop(url, 8, 5.0))
    pids = serve_pids("overload")
    assert {"router", "classifier", "proxy"} <= set(pids), pids
    rss_before = rss_mb(pids)
    peak = dict(rss_before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            for role, mb in rss_mb(pids).items():
                peak[role] = max(peak[role], mb)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # A closed loop on a shared 2-core machine can under-measure capacity (CI once measured 5.1 rps and
    # then served 10.2 rps without a shed at p50 93 ms): when twice the measured rate is not shed, the
    # offered rate doubles, up to three times. What is under test is shedding past capacity, whatever
    # capacity turns out to be.
    for attempt in range(3):
        offered_rps = 2 ** (attempt + 1) * sustainable
        results, offered_s = asyncio.run(open_loop(url, offered_rps, OVERLOAD_S))
        if any(s in (429, 503) for s, _, _ in results):
            break
        print(f"\nno shed at {offered_rps:.1f} rps offered (measured sustainable {sustainable:.1f} rps)")
    stop.set()
    sampler.join(5)
    statuses = Counter(s for s, _, _ in results)
    accepted = [lat for s, lat, _ in results if s == 200]
    in_router = [info["router_s"] for s, _, info in results if s == 200]
    shed = [info for s, _, info in results if s in (429, 503)]
    time.sleep(2)
    recovered = [httpx.post(url, json={"model": MODEL, "texts": TEXTS[:4]}, timeout=30) for _ in range(20)]
    rss_after = rss_mb(pids)
    p99 = statistics.quantiles(accepted, n=100)[98] if len(accepted) > 2 else float("nan")
    p99_router = statistics.quantiles(in_router, n=100)[98] if len(in_router) > 2 else float("nan")
    print(
        f"\noverload: sustainable {sustainable:.1f} rps; offered (try {attempt + 1}) {len(results) / offered_s:.1f} rps for "
        f"{offered_s:.1f} s ({len(results)} requests); accepted {len(accepted) / offered_s:.1f} rps "
        f"({len(accepted)}), shed {len(shed)}; statuses {dict(statuses)}; accepted p50 "
        f"{statistics.median(accepted):.3f} s p99 {p99:.3f} s (in the router: p50 "
        f"{statistics.median(in_router):.3f} s p99 {p99_router:.3f} s)"
    )
    print(
        "RSS MB before/peak/after: "
        + ", ".join(f"{r} {rss_before[r]:.0f}/{peak[r]:.0f}/{rss_after[r]:.0f}" for r in sorted(pids))
    )
    assert set(statuses) <= {200, 503}, statuses  # nothing but answers and sheds: no 5xx, no transport error
    assert shed, f"not shed at {offered_rps:.1f} rps offered, 8x the measured sustainable rate"
    assert all(i["retry_after"] and i["code"] == "overloaded" for i in shed), shed[:3]
    # Not a collapse: at least a third of the closed-loop rate is still answered while the excess is
    # shed (a livelock answers next to nothing). Under overload the 2 cores also carry the client's
    # open loop and every shed request's trip through the proxy and the router, and the host's speed
    # moves between the probe and the load: CI once answered 0.45 of the probe's rate here.
    assert len(accepted) >= sustainable * offered_s / 3, "the service stopped doing useful work"
    # The queues accuwatt bounds (the router's admission, the classifier's ongoing and queued
    # requests) hold an accepted request for little time. The client's own time also holds what
    # waited before the router: in Serve's HTTP proxy and in this test's own client, which share the
    # 2 cores with the service under twice its load (CI once saw p50 2.5 s, p99 18.6 s there, with
    # 400 connections open), bounded by the client's connections, not by a queue of accuwatt's.
    assert p99_router < 5.0, "accepted requests waited in an unbounded queue in the router"
    for role in pids:
        assert peak[role] - rss_before[role] < RSS_GROWTH_LIMIT_MB, (role, rss_before[role], peak[role])
    assert all(r.status_code == 200 for r in recovered), [r.status_code for r in recovered]
