"""The router's idempotency cache: one classification per request_id."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.idempotency import IdempotencyCache, fingerprint
from serve_app.validation import RequestError


def test_repeat_and_concurrent_duplicates_run_once() -> None:
    calls = 0

    async def call() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"n": calls}

    async def main() -> list[tuple[dict[str, int], bool]]:
        cache = IdempotencyCache()
        fp = fingerprint("m", None, ["a"])
        first = await asyncio.gather(*(cache.run("id1", fp, call) for _ in range(5)))  # joined in flight
        later = await cache.run("id1", fp, call)  # answered from the cache
        return [*first, later]

    results = asyncio.run(main())
    assert calls == 1
    assert all(r == {"n": 1} for r, _ in results)
    assert [replayed for _, replayed in results].count(False) == 1


def test_same_id_different_payload_is_a_conflict() -> None:
    async def main() -> None:
        cache = IdempotencyCache()

        async def call() -> dict[str, int]:
            return {"x": 1}

        await cache.run("id", fingerprint("m", None, ["a"]), call)
        await cache.run("id", fingerprint("m", None, ["b"]), call)

    with pytest.raises(RequestError) as exc:
        asyncio.run(main())
    assert exc.value.status == 409 and exc.value.code == "request_id_conflict"


def test_failures_are_not_cached_and_entries_are_bounded() -> None:
    attempts = 0

    async def flaky() -> dict[str, int]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("replica died")
        return {"ok": 1}

    async def main() -> IdempotencyCache:
        cache = IdempotencyCache(max_entries=3)
        fp = fingerprint("m", None, ["a"])
        with pytest.raises(RuntimeError):
            await cache.run("id", fp, flaky)
        assert await cache.run("id", fp, flaky) == ({"ok": 1}, False)
        for i in range(10):
            await cache.run(f"k{i}", fp, flaky)
        return cache

    cache = asyncio.run(main())
    assert len(cache._done) == 3 and not cache._inflight


def test_fingerprint_separates_texts_and_modes() -> None:
    assert fingerprint("m", None, ["ab", "c"]) != fingerprint("m", None, ["a", "bc"])
    assert fingerprint("m", "choice", ["a"]) != fingerprint("m", "score", ["a"])


def test_a_first_client_that_goes_away_does_not_cancel_the_answer_its_retry_waits_for() -> None:
    """Serve cancels the request of a client that disconnects. Its retry, already joined or arriving
    later with the same request_id, gets the one classification's answer, not the cancellation."""
    calls = 0

    async def call() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return {"n": calls}

    async def main() -> tuple[tuple[dict[str, int], bool], tuple[dict[str, int], bool], bool]:
        cache = IdempotencyCache()
        fp = fingerprint("m", None, ["a"])
        first = asyncio.ensure_future(cache.run("id1", fp, call))
        await asyncio.sleep(0.02)
        joined = asyncio.ensure_future(cache.run("id1", fp, call))
        await asyncio.sleep(0.02)
        first.cancel()  # the first client went away
        answer = await joined
        later = await cache.run("id1", fp, call)
        return answer, later, first.cancelled()

    joined, later, first_cancelled = asyncio.run(main())
    assert first_cancelled and calls == 1
    assert joined == ({"n": 1}, True) and later == ({"n": 1}, True)
