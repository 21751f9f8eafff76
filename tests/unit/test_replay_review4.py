"""Review 4 of the replay driver: against real HTTP servers on loopback (the echo server, or a small
Starlette app with uvicorn whose answers take a set time)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.data import DEMO_DIR
from serve_app.errors import UsageError
from serve_app.ports import free_port
from serve_app.replay.client import ClientPool
from serve_app.replay.config import ReplayConfig, ReplayData, ReplayLoad, ReplayOutput
from serve_app.replay.driver import LoadShape, replay_requests
from serve_app.replay.echo_server import EchoServer, EchoState
from serve_app.replay.plan import TestSet, plan_requests
from serve_app.replay.records import RecordStore, read_records
from serve_app.replay.runner import replay_url
from serve_app.wire import ClassifyAnswer, EnergyTag, Prediction

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


class _SlowEveryK:
    """Answers text ``i`` after ``slow_s`` when ``i % k == 0``, else after ``fast_s``, and integrates
    the number of requests it holds over time."""

    def __init__(self, k: int, slow_s: float, fast_s: float) -> None:
        self.k, self.slow_s, self.fast_s = k, slow_s, fast_s
        self.in_flight = self.max_in_flight = 0
        self.area = 0.0
        self.first: float | None = None
        self.last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.area += self.in_flight * (now - self.last)
        else:
            self.first = now
        self.last = now

    @property
    def mean_in_flight(self) -> float:
        assert self.first is not None and self.last is not None
        return self.area / (self.last - self.first)

    async def classify(self, request: Request) -> JSONResponse:
        body = await request.json()
        self._tick()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.slow_s if int(body["texts"][0]) % self.k == 0 else self.fast_s)
        finally:
            self._tick()
            self.in_flight -= 1
        answer = ClassifyAnswer(
            model=body["model"],
            request_id=body["request_id"],
            labels=["x"],
            predictions=[Prediction(label="x")],
            energy=EnergyTag(joules=1.0, source="estimate", measured=False),
            latency_s=0.0,
        )
        return JSONResponse(answer.model_dump())


@pytest.fixture
def slow_every_16() -> Iterator[tuple[str, _SlowEveryK]]:
    app = _SlowEveryK(k=16, slow_s=1.0, fast_s=0.02)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/v1/classify", app.classify, methods=["POST"])]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


def test_a_closed_loop_keeps_its_workers_in_flight_while_one_request_is_slow(tmp_path, slow_every_16):
    """``--concurrency 8``: 8 requests in flight at the service, also while a slow one holds a
    connection. The replay's client spread requests round-robin over its shards of 2 connections: a
    slow request kept its shard busy while the cycle came back to it and the requests sent there
    waited in the client (the service held 2.5 requests on average, not ~7, over 3 times as long)."""
    url, app = slow_every_16
    n = 160  # 10 slow (1 s), 150 fast (20 ms): 8 workers need ~1.6 s, 1 worker 13 s
    ts = TestSet("s", tuple(str(i) for i in range(n)), tuple(str(i) for i in range(n)), ("x",) * n)

    async def replay() -> None:
        async with ClientPool(8, 60.0) as pool:
            with RecordStore(tmp_path / "records.jsonl") as store:
                await replay_requests(
                    pool, url, "m", "s", plan_requests("r", "m", ts), LoadShape(concurrency=8), store, "a"
                )

    asyncio.run(replay())
    recs = read_records(tmp_path / "records.jsonl")
    assert len(recs) == n and all(r.ok for r in recs)
    assert app.max_in_flight == 8
    # ~7 with a client that keeps its workers' requests at the service (measured 7.0 on 2 shared cores)
    assert app.mean_in_flight > 5.0, f"the service held {app.mean_in_flight:.2f} requests on average"


def _echo_replay(url: str, out: Path, concurrency: int = 4) -> Path:
    cfg = ReplayConfig(
        models=["echo"],
        data=ReplayData(test_file=str(DEMO_DIR / "test.jsonl")),
        load=ReplayLoad(concurrency=concurrency),
        output=ReplayOutput(out=str(out), progress=False),
    )
    (folder,) = asyncio.run(replay_url(cfg, url))
    return folder


def test_a_fresh_run_folder_sends_request_ids_of_its_own_and_a_resumed_one_its_old_ids(tmp_path):
    """The request id is the router's idempotency key (answers kept 600 s): the same command into
    another ``--out`` (a second measurement) sent the same ids, and the real router answered it from
    the first run's cache with the first run's energy tags (see the integration test). A resumed folder
    must still send the ids it sent before (a request cut off by a kill is joined, not redone)."""
    with EchoServer(EchoState()) as srv:
        a = _echo_replay(srv.url, tmp_path / "a")
        first = {r.request_index: r.request_id for r in read_records(a / "records.jsonl")}
        b = _echo_replay(srv.url, tmp_path / "b")
        second = {r.request_index: r.request_id for r in read_records(b / "records.jsonl")}
        assert len(first) == len(second) == 200
        assert not set(first.values()) & set(second.values())
        # resume folder a with its last 50 records gone (as if killed): the same 50 ids are sent again
        path = a / "records.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:150]))
        seen_before = dict(srv.state.seen)
        _echo_replay(srv.url, tmp_path / "a")
        resent = {rid for rid, n in srv.state.seen.items() if n > seen_before.get(rid, 0)}
        resumed = {r.request_index: r.request_id for r in read_records(path)}
    assert resumed == first
    assert len(resent) == 50 and resent <= set(first.values())


def test_a_second_replay_of_a_run_folder_being_written_is_refused(tmp_path):
    """The same command started again while the first still runs (another terminal, a scheduler):
    before, both sent and recorded the requests neither had done yet (262 records for 200 requests,
    62 twice, their texts and energy counted twice in metrics.json), and both exited 0."""
    repo = Path(__file__).resolve().parents[2]
    with EchoServer(EchoState(delay_s=0.02)) as srv:
        cmd = [sys.executable, "-m", "serve_app.cli", "replay", "--url", srv.url, "--test-file"]
        cmd += [str(DEMO_DIR / "test.jsonl"), "--models", "echo", "--concurrency", "2"]
        cmd += ["--out", str(tmp_path), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(repo)}
        first = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while (
                not (hits := list(tmp_path.rglob("records.jsonl"))) or hits[0].read_bytes().count(b"\n") < 20
            ):
                assert first.poll() is None, first.stdout.read().decode()[-3000:] if first.stdout else ""
                assert time.monotonic() < deadline, "the first replay made no progress"
                time.sleep(0.02)
            with pytest.raises(UsageError, match="being written by another replay"):
                _echo_replay(srv.url, tmp_path, concurrency=2)
            assert first.wait(timeout=60) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        # once the first is done, the same command resumes the folder (nothing left to send)
        (folder,) = {p.parent for p in tmp_path.rglob("records.jsonl")}
        assert _echo_replay(srv.url, tmp_path, concurrency=2) == folder
    recs = read_records(folder / "records.jsonl")
    assert sorted(r.request_index for r in recs) == list(range(200))
