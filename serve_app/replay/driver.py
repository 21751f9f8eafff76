"""The replay loop: send planned requests in a closed or open loop and record each outcome.

- Closed loop (``rate_rps=None``): ``concurrency`` workers, each sends its next request as soon as the
  previous one answered.
- Open loop (``rate_rps`` set): requests are sent at seeded arrival times (``arrivals.py``) whether or
  not earlier ones answered; ``concurrency`` (if set) caps the requests in flight, and a request that
  waits for a free slot is sent late (its record keeps the planned offset).

Requests already in the store are skipped, so a rerun continues where a killed one stopped.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import ValidationError

from serve_app.replay.arrivals import arrival_times_s
from serve_app.replay.client import ClientPool, Outcome, RetryPolicy, classify
from serve_app.replay.plan import PlannedRequest
from serve_app.replay.records import Record, RecordStore
from serve_app.wire import ClassifyAnswer

OPEN_LOOP_MAX_IN_FLIGHT = 1024


@dataclass(frozen=True)
class LoadShape:
    """How requests are offered. ``rate_rps=None``: closed loop with ``concurrency`` workers."""

    concurrency: int | None = None
    rate_rps: float | None = None
    arrivals: Literal["poisson", "gamma"] = "poisson"
    burstiness: float = 1.0
    seed: int = 0

    @property
    def open_loop(self) -> bool:
        return self.rate_rps is not None

    @property
    def max_in_flight(self) -> int:
        if self.concurrency is not None:
            return max(1, self.concurrency)
        return OPEN_LOOP_MAX_IN_FLIGHT if self.open_loop else 1

    def describe(self) -> str:
        if not self.open_loop:
            return f"closed-c{self.max_in_flight}"
        shape = "poisson" if self.arrivals == "poisson" else f"gamma{self.burstiness:g}"
        cap = f"-c{self.concurrency}" if self.concurrency else ""
        return f"open-{self.rate_rps:g}rps-{shape}{cap}"


@dataclass(frozen=True)
class WindowResult:
    """One session's replay window for a (model, split). Times in Unix seconds."""

    start_unix_s: float
    end_unix_s: float
    sent: int
    skipped: int

    @property
    def duration_s(self) -> float:
        return self.end_unix_s - self.start_unix_s


def outcome_to_record(
    req: PlannedRequest, model: str, split: str, session: str, offset_s: float, out: Outcome
) -> Record:
    """The record of one finished request (pure)."""
    fields: dict[str, Any] = {}
    answer = None
    if out.body is not None:
        try:
            answer = ClassifyAnswer.model_validate(out.body)
        except ValidationError as exc:  # a 200 that is not a classify answer: a failed request
            fields["error"] = f"malformed answer: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}"
            fields["error_code"] = "malformed_answer"
    if answer is not None:
        preds = answer.predictions
        fields["predicted"] = [p.label for p in preds]
        fields["parsed"] = [p.parsed for p in preds]
        if any(p.prompt_tokens is not None for p in preds):
            fields["prompt_tokens"] = [p.prompt_tokens for p in preds]
            fields["generated_tokens"] = [p.generated_tokens for p in preds]
        fields["energy"] = answer.energy
        fields["server_latency_s"] = answer.latency_s
        if len(preds) != len(req.texts):
            fields["error"] = f"answered {len(preds)} labels for {len(req.texts)} texts"
            fields["error_code"] = "label_count_mismatch"
    return Record(
        model=model,
        split=split,
        request_index=req.index,
        request_id=req.request_id,
        session=session,
        text_ids=list(req.text_ids),
        gold=list(req.gold),
        sent_unix_s=out.sent_unix_s,
        scheduled_offset_s=offset_s,
        latency_s=out.latency_s,
        total_s=out.total_s,
        status=out.status,
        attempts=out.attempts,
        error=fields.pop("error", out.error),
        error_code=fields.pop("error_code", out.error_code),
        **fields,
    )


async def replay_requests(
    client: httpx.AsyncClient | ClientPool,
    base_url: str,
    model: str,
    split: str,
    requests: list[PlannedRequest],
    shape: LoadShape,
    store: RecordStore,
    session: str,
    policy: RetryPolicy | None = None,
    on_done: Callable[[Record], None] | None = None,
) -> WindowResult:
    """Send every request of ``requests`` not yet in ``store``; append one record each."""
    todo = [r for r in requests if (model, split, r.index) not in store.done]
    rng = random.Random(f"{shape.seed}:{model}:{split}:{session}")
    offsets = arrival_times_s(
        len(todo),
        shape.rate_rps,
        shape.arrivals,
        shape.burstiness,
        seed=zlib.crc32(f"{shape.seed}:{model}:{split}".encode()),
    )
    sem = asyncio.Semaphore(shape.max_in_flight)
    start_unix_s = time.time()
    t0 = time.perf_counter()

    async def one(req: PlannedRequest, offset_s: float) -> None:
        out = await classify(
            client, base_url, model, list(req.texts), req.request_id, policy or RetryPolicy(), rng
        )
        rec = outcome_to_record(req, model, split, session, offset_s, out)
        store.append(rec)
        if on_done is not None:
            on_done(rec)

    if shape.open_loop:
        tasks = []
        for req, off in zip(todo, offsets, strict=True):
            delay = off - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            task = asyncio.create_task(one(req, float(off)))
            task.add_done_callback(lambda _t: sem.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
    else:
        queue: asyncio.Queue[PlannedRequest] = asyncio.Queue()
        for req in todo:
            queue.put_nowait(req)

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait(), 0.0)

        await asyncio.gather(*(worker() for _ in range(min(shape.max_in_flight, max(1, len(todo))))))
    store.sync()
    return WindowResult(start_unix_s, time.time(), len(todo), len(requests) - len(todo))
