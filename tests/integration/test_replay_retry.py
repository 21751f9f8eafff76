"""``accuwatt replay --retry-failed``: a replay that met a short outage (some requests answered 503 until
their attempts ran out) is finished by the same command with the flag, against the healthy service:
every request ends with exactly one record, the new one; the failures are kept in
``records.failed.jsonl``; the metrics and the report count each request once.

The outage is a real HTTP proxy in front of the service that answers 503 to the requests carrying some
of the texts and forwards everything else."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve_app.cli import main
from serve_app.data import DEMO_DIR
from serve_app.ports import free_port
from serve_app.replay.echo_server import EchoServer, EchoState
from serve_app.replay.records import Record, audit_path, read_records
from serve_app.wire import RunInfo
from tests.conftest import traditional_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]

TEST_FILE = DEMO_DIR / "test.jsonl"
TEXTS = [json.loads(line)["text"] for line in TEST_FILE.read_text().splitlines() if line.strip()]
DOWN = {t for i, t in enumerate(TEXTS) if i % 5 == 2}
"""The texts whose requests meet the outage."""
DOWN_IDS = {f"test:{i}" for i, t in enumerate(TEXTS) if t in DOWN}
HOP_HEADERS = {"content-length", "content-encoding", "transfer-encoding", "connection"}


class OutageProxy:
    """Forwards every request to ``upstream``, but answers ``POST /v1/classify`` with 503
    (``Retry-After: 0``) when one of the request's texts is in ``down``."""

    def __init__(self, upstream: str, down: set[str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.down = down
        self.refused: Counter[str] = Counter()
        self.port = free_port()
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        if request.method == "POST" and request.url.path == "/v1/classify":
            sent = json.loads(body)
            if self.down & set(sent.get("texts") or [sent.get("text")]):
                self.refused[str(sent.get("request_id"))] += 1
                return JSONResponse(
                    {"error": {"code": "unavailable", "message": "replica restarting", "field": None}},
                    status_code=503,
                    headers={"Retry-After": "0"},
                )
        url = self.upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS | {"host"}}
        async with httpx.AsyncClient(timeout=120) as client:
            resp = await client.request(request.method, url, content=body, headers=headers)
        keep = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(resp.content, status_code=resp.status_code, headers=keep)

    def __enter__(self) -> OutageProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _replay(url: str, out: Path, model: str, *extra: str) -> int:
    argv = ["replay", "--url", url, "--models", model, "--test-file", str(TEST_FILE), "--out", str(out)]
    return main([*argv, "--concurrency", "2", "--max-attempts", "2", "--no-progress", *extra])


def _folder(out: Path) -> Path:
    (records,) = out.rglob("records.jsonl")
    return records.parent


def _first_run_met_the_outage(folder: Path, proxy: OutageProxy) -> list[Record]:
    recs = read_records(folder / "records.jsonl")
    failed = [r for r in recs if not r.ok]
    assert len(recs) == len(TEXTS)
    assert {i for r in failed for i in r.text_ids} == DOWN_IDS
    assert all(r.status == 503 and r.error for r in failed)
    assert set(proxy.refused) == {r.request_id for r in failed}
    assert set(proxy.refused.values()) == {2}  # --max-attempts 2: the replay's own retries ran out
    return failed


def _retried_run_is_whole(folder: Path, failed: list[Record], tmp_path: Path) -> list[Record]:
    recs = read_records(folder / "records.jsonl")
    assert sorted(r.request_index for r in recs) == list(range(len(TEXTS))), "each request exactly once"
    assert all(r.ok for r in recs)
    assert sorted(i for r in recs for i in r.text_ids) == sorted(f"test:{i}" for i in range(len(TEXTS)))
    assert read_records(audit_path(folder / "records.jsonl")) == failed
    info = RunInfo.model_validate_json((folder / "run.json").read_text())
    assert [s.failed_moved_aside for s in info.sessions] == [None, None, len(failed)]
    retried = {r.request_index for r in recs if r.session == info.sessions[-1].session}
    assert retried == {r.request_index for r in failed}
    mean = json.loads((folder / "metrics.json").read_text())["mean"]
    assert (mean["n_requests"], mean["n_texts"], mean["n_errors"]) == (len(TEXTS), len(TEXTS), 0)
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 0
    with (tmp_path / "report" / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (int(row["n_requests"]), int(row["n_texts"]), int(row["n_errors"])) == (len(TEXTS), len(TEXTS), 0)
    return recs


def _outage_then_retry(url: str, model: str, tmp_path: Path) -> list[Record]:
    out = tmp_path / "out"
    with OutageProxy(url, DOWN) as proxy:
        assert _replay(proxy.url, out, model) == 0  # some answers: a measurement with failures
    folder = _folder(out)
    failed = _first_run_met_the_outage(folder, proxy)
    before = (folder / "records.jsonl").read_bytes()
    assert _replay(url, out, model) == 0  # without the flag: a resume sends nothing, as before
    assert (folder / "records.jsonl").read_bytes() == before
    assert not audit_path(folder / "records.jsonl").exists()
    assert _replay(url, out, model, "--retry-failed") == 0
    assert _folder(out) == folder
    return _retried_run_is_whole(folder, failed, tmp_path)


def test_retry_failed_sends_the_failed_requests_again_against_a_local_endpoint(tmp_path: Path) -> None:
    with EchoServer(EchoState(delay_s=0.005)) as srv:
        _outage_then_retry(srv.url, "echo", tmp_path)
        assert set(srv.state.answered.values()) == {1}  # every request classified once, in all
        assert len(srv.state.answered) == len(TEXTS)


@pytest.mark.slow
def test_retry_failed_against_the_service(tmp_path: Path, serve_app_factory, demo_artifacts) -> None:
    url = serve_app_factory(
        traditional_config(demo_artifacts, ["tfidf-logreg"]),
        name="replay-retry",
        route_prefix="/replay-retry",
    )
    recs = _outage_then_retry(url, "tfidf-logreg", tmp_path)
    assert all(r.energy is not None and r.energy.source != "unavailable" for r in recs)


def _as_failed(line: str) -> str:
    """A record line as an outage leaves it: 503, no answer, no energy."""
    row = json.loads(line)
    for key in ("predicted", "parsed", "energy", "latency_s", "server_latency_s"):
        row.pop(key, None)
    row.update(status=503, error="gave up after 6 attempts: replica restarting", error_code="unavailable")
    return json.dumps(row) + "\n"


@pytest.mark.slow
def test_retry_failed_with_local(tmp_path: Path) -> None:
    """``--local`` (one deployment per split): failed records of both splits are sent again, the second
    split's too (a split is replayed again when its records are incomplete). The failures are written
    into the run folder as an outage would have left them: ``--local`` deploys its own service."""
    cmd = [sys.executable, "-m", "serve_app.cli", "replay", "--local", "--dataset", "demo"]
    cmd += ["--models", "tfidf-logreg", "--splits", "2", "--n-train", "120", "--n-test", "20"]
    cmd += ["--batch-size", "2", "--concurrency", "2", "--out", str(tmp_path / "out"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = _folder(tmp_path / "out")
    lines = (folder / "records.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 20
    down = {0, 7, 14, 19}  # of the 20 lines: both splits
    (folder / "records.jsonl").write_text(
        "".join(_as_failed(x) if i in down else x for i, x in enumerate(lines))
    )
    failed = [r for r in read_records(folder / "records.jsonl") if not r.ok]
    assert len({r.split for r in failed}) == 2
    again = subprocess.run(
        [*cmd, "--retry-failed"], cwd=REPO, env=env, capture_output=True, text=True, timeout=280
    )
    assert again.returncode == 0, again.stderr[-3000:]
    recs = read_records(folder / "records.jsonl")
    assert len({r.key for r in recs}) == len(recs) == 20, "each request exactly once"
    assert all(r.ok and r.energy is not None for r in recs)
    assert read_records(audit_path(folder / "records.jsonl")) == failed
    info = RunInfo.model_validate_json((folder / "run.json").read_text())
    assert [s.failed_moved_aside for s in info.sessions] == [None, len(down)]
    assert {r.key for r in recs if r.session == info.sessions[-1].session} == {r.key for r in failed}
