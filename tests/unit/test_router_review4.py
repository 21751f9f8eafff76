"""Review 4 of the request path (router, idempotency, validation): each test failed before its fix."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.idempotency import IdempotencyCache, fingerprint

pytestmark = pytest.mark.unit


def test_expired_answers_are_dropped_not_kept_until_newer_ones_evict_them() -> None:
    """An answer older than ``ttl_s`` is never replayed, so the cache must not hold it: with the
    default bound of 10,000 entries a quiet router kept every expired answer (texts' predictions and
    tags) in memory indefinitely."""
    calls = 0

    async def call() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    async def main() -> tuple[int, int, tuple[dict[str, int], bool], tuple[dict[str, int], bool]]:
        cache: IdempotencyCache[dict[str, int]] = IdempotencyCache(ttl_s=0.2)
        fp = fingerprint("m", None, ["a"])
        for i in range(50):
            await cache.run(f"old{i}", fp, call)
        fresh_before = await cache.run("old0", fp, call)  # still within ttl: replayed
        await asyncio.sleep(0.3)
        await cache.run("new", fp, call)  # any later request drops what expired
        kept = len(cache._done)
        again = await cache.run("old1", fp, call)  # expired: classified again, not replayed
        return kept, len(cache._done), fresh_before, again

    kept, kept_after, fresh_before, again = asyncio.run(main())
    assert fresh_before == ({"n": 1}, True)
    assert kept == 1  # only "new"
    assert again == ({"n": 52}, False) and kept_after == 2
