"""Awaiting with a deadline, one way: ``asyncio.timeout`` where Python has it (3.11+), which bounds the
await in the caller's own task; ``asyncio.wait_for`` before, which wraps it in a task of its own (one
task and two turns of the event loop more per call: measured 51 µs against 22 µs per call here, and the
router makes two per request).

Both raise ``asyncio.TimeoutError`` (the built-in ``TimeoutError`` since 3.11) and cancel the awaited
work when the deadline passes.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], seconds: float) -> T:
    """``await aw``, or ``asyncio.TimeoutError`` after ``seconds``."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)
