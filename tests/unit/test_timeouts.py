"""`within`: the value of an awaitable that finishes in time; past the deadline, TimeoutError and the
awaited work cancelled (it must not keep running: a classify call past the router's timeout is given up)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.timeouts import within

pytestmark = pytest.mark.unit


def test_value_in_time() -> None:
    async def quick() -> int:
        await asyncio.sleep(0.001)
        return 7

    assert asyncio.run(within(quick(), 1.0)) == 7


def test_deadline_raises_and_cancels_the_work() -> None:
    seen: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> float:
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(asyncio.TimeoutError):
            await within(slow(), 0.05)
        return asyncio.get_running_loop().time() - t0

    waited = asyncio.run(main())
    assert 0.04 <= waited < 1.0
    assert seen == ["cancelled"]


def test_an_awaitable_that_is_not_a_coroutine() -> None:
    """Ray's ObjectRefs and Serve's responses are awaitables, not coroutines."""

    async def main() -> str:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.001, fut.set_result, "ok")
        return await within(fut, 1.0)

    assert asyncio.run(main()) == "ok"
