"""One classification request over HTTP, with the retries a well-behaved client owes the service.

429 and 503 are retried after their ``Retry-After`` (seconds or an HTTP date) times a random jitter
factor in ``[1, 1 + jitter]``; transport errors (connection refused or reset, timeouts) after an
exponential backoff with the same jitter. Every attempt carries the same ``request_id``, so the
service can deduplicate and the replay records the request once. Other 4xx/5xx are final: the error
body's ``code`` and ``message`` become the record's error. A 200 whose body is not a JSON object (a
proxy's HTML page) is final too, with the code ``malformed_answer``: the replay records it and goes on.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 503})
PROXY_FAILURE_STATUSES = frozenset({500, 502, 504})
"""Retried only when the body is not the router's JSON error: then the proxy answered for a router
that died or restarted, and the request (with the same ``request_id``) is safe to send again."""


def auth_headers() -> dict[str, str]:
    """The router's bearer token, from the environment variable the router reads (default config)."""
    key = os.environ.get("ACCUWATT_API_KEY", "")
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_s: float = 0.25
    """First wait after a transport error (doubles each time, capped by ``max_wait_s``)."""
    max_wait_s: float = 30.0
    jitter: float = 0.5
    default_retry_after_s: float = 1.0


@dataclass(frozen=True)
class Outcome:
    """The final answer to a request. ``body`` is the decoded 200 answer, else ``None``."""

    status: int | None
    body: dict[str, Any] | None
    latency_s: float | None
    total_s: float
    sent_unix_s: float
    attempts: int
    error: str | None = None
    error_code: str | None = None


def retry_after_s(value: str | None, default_s: float, now_unix_s: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); ``default_s`` if absent/bad."""
    if value is None or not value.strip():
        return default_s
    v = value.strip()
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return default_s
    now = time.time() if now_unix_s is None else now_unix_s
    return max(0.0, when.timestamp() - now)


def _error_of(resp: httpx.Response) -> tuple[str, str]:
    try:
        err = resp.json().get("error", {})
        return str(err.get("code") or f"http_{resp.status_code}"), str(err.get("message") or resp.text[:200])
    except (ValueError, AttributeError):
        return f"http_{resp.status_code}", resp.text[:200]


def _answer_of(resp: httpx.Response) -> tuple[dict[str, Any] | None, str | None]:
    """A 200's decoded body and None, or None and why it is not a JSON object."""
    try:
        body = resp.json()
    except ValueError as exc:
        return None, f"malformed answer: not JSON ({exc}): {resp.text[:200]!r}"
    if not isinstance(body, dict):
        return None, f"malformed answer: a JSON {type(body).__name__}, not an object"
    return body, None


class ClientPool:
    """Several small ``httpx.AsyncClient`` pools; each request goes to the one with the fewest requests
    in flight.

    httpcore's pool scans every connection for every request, so one client with many connections
    costs O(connections) CPU per request; ``shards`` clients of a few connections each keep the
    driver's cost per request flat (about half the CPU at 16 in flight, measured on 2 cores). The
    least busy shard has fewer than ``ceil(max_in_flight / shards)`` requests in flight, so a request
    never waits for one of its connections. Round-robin did not hold that: a slow request kept its
    shard's connections while the cycle came back to it, and the next requests sent there queued in
    the client (closed loop, 8 workers, one request in 16 taking 1 s: the service saw 2.5 requests in
    flight on average, not 7, and the waits counted in the requests' latency)."""

    def __init__(
        self,
        max_in_flight: int,
        timeout_s: float,
        headers: dict[str, str] | None = None,
        shards: int | None = None,
    ) -> None:
        n = shards or max(1, min(max_in_flight, 32))
        per = -(-max_in_flight // n) + 1
        self._clients = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
                headers=headers or {},
                trust_env=False,
            )
            for _ in range(n)
        ]
        self._busy = [0] * n

    async def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        i = min(range(len(self._clients)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:  # (the body is read before the request returns: its connection is free again)
            return await self._clients[i].request(method, url, **kw)
        finally:
            self._busy[i] -= 1

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self._send("POST", url, **kw)

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self._send("GET", url, **kw)

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def classify(
    client: httpx.AsyncClient | ClientPool,
    base_url: str,
    model: str,
    texts: list[str],
    request_id: str,
    policy: RetryPolicy = RetryPolicy(),
    rng: random.Random | None = None,
) -> Outcome:
    """POST /v1/classify until it answers, fails for good, or ``policy.max_attempts`` are spent."""
    rng = rng or random.Random()
    payload = {"model": model, "texts": texts, "request_id": request_id}
    url = base_url.rstrip("/") + "/v1/classify"
    sent_unix_s = time.time()
    t0 = time.perf_counter()
    status: int | None = None
    code, message = "no_attempt", ""
    for attempt in range(1, policy.max_attempts + 1):
        t_attempt = time.perf_counter()
        try:
            resp = await client.post(url, json=payload)
        except httpx.TransportError as exc:
            status, code, message = None, "transport_error", f"{type(exc).__name__}: {exc}"
            wait_s = min(policy.max_wait_s, policy.backoff_s * 2 ** (attempt - 1))
        else:
            latency_s = time.perf_counter() - t_attempt
            status = resp.status_code
            if status == 200:
                body, why = _answer_of(resp)
                bad = None if why is None else "malformed_answer"
                return Outcome(200, body, latency_s, time.perf_counter() - t0, sent_unix_s, attempt, why, bad)
            code, message = _error_of(resp)
            proxy_failure = status in PROXY_FAILURE_STATUSES and code.startswith("http_")
            if status not in RETRY_STATUSES and not proxy_failure:
                return Outcome(
                    status, None, latency_s, time.perf_counter() - t0, sent_unix_s, attempt, message, code
                )
            wait_s = min(
                policy.max_wait_s,
                retry_after_s(resp.headers.get("retry-after"), policy.default_retry_after_s),
            )
        if attempt < policy.max_attempts:
            await asyncio.sleep(wait_s * (1.0 + policy.jitter * rng.random()))
    return Outcome(
        status,
        None,
        None,
        time.perf_counter() - t0,
        sent_unix_s,
        policy.max_attempts,
        f"gave up after {policy.max_attempts} attempts: {message}",
        code,
    )
