"""Kill the replay half-way (SIGKILL), rerun the same command: exactly one record per request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.data import DEMO_DIR
from serve_app.replay.echo_server import EchoServer, EchoState
from serve_app.replay.records import read_records
from tests.conftest import traditional_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def _cmd(url: str, out: Path, model: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serve_app.cli",
        "replay",
        "--url",
        url,
        "--test-file",
        str(DEMO_DIR / "test.jsonl"),
        "--models",
        model,
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _records_file(out: Path) -> Path | None:
    hits = list(out.rglob("records.jsonl"))
    return hits[0] if hits else None


def kill_and_resume(url: str, out: Path, model: str, kill_after: int, *extra: str) -> list:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        _cmd(url, out, model, *extra), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while True:
        f = _records_file(out)
        n = f.read_bytes().count(b"\n") if f and f.exists() else 0
        if n >= kill_after:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.stdout else ""
        assert time.monotonic() < deadline, "replay made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    f = _records_file(out)
    assert f is not None
    first = len(read_records(f))
    assert kill_after <= first < 200, f"killed too late ({first} records)"
    done = subprocess.run(
        _cmd(url, out, model, *extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    recs = read_records(f)
    assert len({r.session for r in recs}) == 2
    return recs


def _exactly_once(recs: list) -> None:
    idx = sorted(r.request_index for r in recs)
    assert idx == list(range(200)), "each request exactly once"
    assert len({r.request_id for r in recs}) == 200
    assert sorted(i for r in recs for i in r.text_ids) == sorted(f"test:{i}" for i in range(200))
    assert all(r.ok for r in recs)


def test_kill_and_resume_against_a_local_endpoint(tmp_path):
    with EchoServer(EchoState(delay_s=0.01)) as srv:
        recs = kill_and_resume(srv.url, tmp_path, "echo", 50, "--concurrency", "2")
    _exactly_once(recs)


@pytest.mark.slow
def test_kill_and_resume_against_the_service(tmp_path, serve_app_factory, demo_artifacts):
    url = serve_app_factory(
        traditional_config(demo_artifacts, ["tfidf-logreg"]),
        name="replay-resume",
        route_prefix="/replay-resume",
    )
    recs = kill_and_resume(url, tmp_path, "tfidf-logreg", 60, "--concurrency", "2")
    _exactly_once(recs)
    assert all(r.energy is not None and r.energy.source != "unavailable" for r in recs)
    metrics = (next(tmp_path.rglob("metrics.json"))).read_text()
    assert '"n_requests": 200' in metrics
