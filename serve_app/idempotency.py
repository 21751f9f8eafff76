"""Idempotent classification by client ``request_id``.

A client that retries (after a timeout, a 503, a router restart, or a replay that resumes) sends the
same ``request_id``. The router then answers from this cache, or joins the request still in flight,
so the text is classified, and its energy metered, once, even when the first client went away while
it ran (the classification goes on, and its answer waits for the retry). A reused id with a different
payload is a client error (409), not a cache hit. Failures are not cached: a retry after one runs again.
Bounded: at most ``max_entries`` answers, each kept for ``ttl_s`` (an expired answer is dropped at the
next request, not kept until newer ones evict it). Per router replica, in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from serve_app.validation import RequestError

T = TypeVar("T")


def fingerprint(model: str, mode: str | None, texts: list[str]) -> str:
    h = hashlib.sha256(f"{model}\x00{mode}\x00{len(texts)}".encode())
    for t in texts:
        h.update(b"\x00" + t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class IdempotencyCache(Generic[T]):
    """Answers of type ``T`` by request id (the router keeps `wire.ReplicaAnswer`)."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 600.0) -> None:
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._done: OrderedDict[str, tuple[float, str, T]] = OrderedDict()
        self._inflight: dict[str, tuple[str, asyncio.Future[T]]] = {}
        self._waiters: dict[str, int] = {}  # clients waiting on each call in flight

    def _check(self, key: str, stored: str, fp: str) -> None:
        if stored != fp:
            raise RequestError(
                409,
                "request_id_conflict",
                "this request_id was already used for a different request",
                "request_id",
            )

    async def run(self, key: str, fp: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(result, replayed)``: the cached or joined result (replayed) or a fresh one."""
        self._expire(time.monotonic())
        hit = self._done.get(key)
        if hit is not None:
            self._check(key, hit[1], fp)
            return hit[2], True
        if key in self._inflight:
            stored, running = self._inflight[key]
            self._check(key, stored, fp)
            return await self._wait(key, running), True
        # The call runs as a task of its own: a first client that goes away (Serve cancels its request)
        # does not cancel it, so a retry that joined it, or comes later, gets its answer.
        task = asyncio.ensure_future(call())
        self._inflight[key] = (fp, task)
        task.add_done_callback(lambda done: self._settle(key, fp, done))
        return await self._wait(key, task), False

    async def _wait(self, key: str, task: asyncio.Future[T]) -> T:
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:  # (the call may have settled first and its count gone with it)
            left = self._waiters.get(key, 0) - 1
            if left > 0:
                self._waiters[key] = left
            else:
                self._waiters.pop(key, None)

    @property
    def orphans(self) -> int:
        """Calls in flight that no client waits for any more (each went away): work and memory of the
        router that no request in flight accounts for."""
        return sum(1 for key in self._inflight if key not in self._waiters)

    def _expire(self, now: float) -> None:
        """Drop the answers older than ``ttl_s``: ``_done`` is in the order they were kept (oldest first)."""
        while self._done:
            kept_at = next(iter(self._done.values()))[0]
            if now - kept_at <= self.ttl_s:
                return
            self._done.popitem(last=False)

    def _settle(self, key: str, fp: str, task: asyncio.Future[T]) -> None:
        """Keep a finished call's answer; a failure is not kept (a retry runs again)."""
        del self._inflight[key]
        self._waiters.pop(key, None)
        if task.cancelled() or task.exception() is not None:  # retrieved: joiners re-raise it
            return
        now = time.monotonic()
        self._done[key] = (now, fp, task.result())
        self._done.move_to_end(key)
        self._expire(now)
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)
