"""The HTTP load the Serve benchmarks share: texts split into requests of ``batch`` texts, sent by
``concurrency`` workers, each awaiting its answer before sending the next."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


async def post_in_chunks(
    url: str, body: dict[str, Any], texts: list[str], batch: int, concurrency: int, timeout_s: float = 60.0
) -> float:
    """POST ``{**body, "texts": chunk}`` for every chunk; returns the wall time in seconds."""
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for i in range(0, len(texts), batch):
        queue.put_nowait(texts[i : i + batch])
    async with httpx.AsyncClient(timeout=timeout_s) as client:

        async def worker() -> None:
            while not queue.empty():
                r = await client.post(url, json={**body, "texts": queue.get_nowait()})
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0
