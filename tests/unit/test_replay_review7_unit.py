"""Replay against bad or missing services, review 7: nothing listening at ``--url`` is one line after a
short grace (``--connect-timeout``, 30 s by default), not after the 900 s kept for a router that answers
while it loads (``--ready-timeout``); a ``/v1/models`` 200 that is no model list is one line, not a
pydantic traceback; every model's resume is checked before the first request is sent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from serve_app.cli import main
from serve_app.data import DEMO_DIR
from serve_app.replay.echo_server import EchoServer, EchoState
from serve_app.replay.records import read_records
from tests.unit.test_cli_review6 import plain_server

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
TEST_FILE = str(DEMO_DIR / "test.jsonl")


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed again: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replay_cmd(url: str, out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "serve_app.cli", "replay", "--url", url, "--test-file", TEST_FILE]
    return [*cmd, "--out", str(out), "--no-progress", *extra]


def _run(cmd: list[str], timeout_s: float) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    return done, time.monotonic() - t0


def _last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("accuwatt: error: "), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


@contextmanager
def _service(readyz: tuple[int, str], models: tuple[str, str]) -> Iterator[str]:
    """A stand-in service on a free port: ``/readyz`` answers ``readyz`` (status, JSON body),
    ``/v1/models`` answers 200 with ``models`` (content type, body); yields its base URL."""
    paths: dict[str, tuple[int, bytes] | tuple[int, bytes, str]] = {
        "/readyz": (readyz[0], readyz[1].encode()),
        "/v1/models": (200, models[1].encode(), models[0]),
    }
    yield from plain_server(404, b'{"error": {"code": "not_found"}}', "application/json", paths)


# -- 1. nothing listening: a short grace, one line; a loading router: the long wait ----------------------


def test_nothing_listening_is_one_line_naming_the_url_after_the_connect_timeout(tmp_path: Path) -> None:
    """Before, ``replay --url`` at a port where nothing listens waited READY_TIMEOUT_S (900 s) for its
    one line; ``--connect-timeout`` did not exist."""
    url = f"http://127.0.0.1:{_closed_port()}"
    done, took = _run(_replay_cmd(url, tmp_path / "out", "--connect-timeout", "2"), 120)
    assert done.returncode == 1, done.stderr[-3000:]
    line = _last_error_line(done.stderr)
    assert f"nothing answers at {url}" in line and "connection refused" in line, line
    assert took < 30, took


def test_nothing_listening_ends_after_the_default_grace_not_the_ready_wait(tmp_path: Path) -> None:
    """Without flags: about 30 s (a service may be starting), where it was 900 s."""
    url = f"http://127.0.0.1:{_closed_port()}"
    done, took = _run(_replay_cmd(url, tmp_path / "out"), 120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"nothing answers at {url}" in _last_error_line(done.stderr)
    assert 25 <= took < 60, took


def test_a_router_that_answers_while_loading_is_waited_for_up_to_the_ready_timeout(tmp_path: Path) -> None:
    """A 503 from ``/readyz`` is a router loading its classifiers: the connect grace does not end that
    wait, ``--ready-timeout`` does."""
    loading = (503, '{"ready": false, "not_ready": {"m": {"state": "loading"}}}')
    with _service(loading, ("application/json", '{"models": []}')) as url:
        cmd = _replay_cmd(url, tmp_path / "out", "--connect-timeout", "1", "--ready-timeout", "4")
        done, took = _run(cmd, 120)
    assert done.returncode == 1, done.stderr[-3000:]
    line = _last_error_line(done.stderr)
    assert f"{url} was not ready within 4 s" in line and "503" in line, line
    assert took >= 3.5, took


def test_the_wait_flags_are_in_the_help_and_refused_with_local(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--ready-timeout SECONDS" in text and "--connect-timeout SECONDS" in text, text
    assert main(["replay", "--local", "--ready-timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("accuwatt: error: --ready-timeout") and "--url" in err, err


# -- 2. a /v1/models 200 that is no model list ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/json", "[]"),
        ("application/json", '{"x": 1}'),
        ("text/html", "<html><body>Welcome to nginx!</body></html>"),
        ("application/json", '{"models": [{"id": 3}]}'),
    ],
)
def test_a_models_answer_that_is_no_model_list_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ctype: str, body: str
) -> None:
    """Before: a pydantic traceback, or a RuntimeError's ("no models to replay") after five retries."""
    with _service((200, '{"ready": true}'), (ctype, body)) as url:
        argv = ["replay", "--url", url, "--test-file", TEST_FILE, "--out", str(tmp_path), "--no-progress"]
        assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"accuwatt: error: {url}/v1/models answered 200 but not an accuwatt model list: "
    ), err
    assert not list(tmp_path.rglob("records.jsonl"))


# -- 3. every model's resume checked before the first request ---------------------------------------------


def _echo_argv(url: str, out: Path, models: str, batch: int) -> list[str]:
    return ["replay", "--url", url, "--test-file", TEST_FILE, "--models", models, "--run-name", "r7"] + [
        "--batch-size",
        str(batch),
        "--out",
        str(out),
        "--no-progress",
    ]


def test_a_refused_resume_of_the_second_model_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Model b's folder holds requests sent with ``--batch-size 2``; ``--models a,b --batch-size 1`` under
    the same ``--run-name`` is refused for b. Before, b's check ran only after a's 200 requests were
    sent and recorded."""
    with EchoServer(EchoState(models=("a", "b"))) as srv:
        assert main(_echo_argv(srv.url, tmp_path, "b", 2)) == 0
        sent_before = sum(srv.state.seen.values())
        capsys.readouterr()
        assert main(_echo_argv(srv.url, tmp_path, "a,b", 1)) == 2
        sent_after = sum(srv.state.seen.values())
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("accuwatt: error: ") and "--batch-size" in err[-1], err
    assert sent_after == sent_before, "requests were sent before the refusal"
    a_records = [p for p in tmp_path.rglob("records.jsonl") if "/a/" in str(p)]
    assert all(not read_records(p) for p in a_records), a_records


# -- 4. SIGTERM unwinds (the demo itself: tests/integration/test_replay_review7.py) ------------------------


def test_sigterm_inside_the_block_unwinds_and_the_handler_before_is_back() -> None:
    from serve_app.signals import TERMINATED_EXIT, sigterm_unwinds

    before = signal.getsignal(signal.SIGTERM)
    cleaned: list[object] = []
    with pytest.raises(SystemExit) as raised, sigterm_unwinds():
        try:
            with sigterm_unwinds():  # nested, as demo -> local_ray: the inner exit does not re-arm
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)  # the handler raises before this ends
                finally:
                    cleaned.append("inner")
        finally:  # the outer block's cleanup is not cut short by another SIGTERM
            cleaned.append(signal.getsignal(signal.SIGTERM))
    assert raised.value.code == TERMINATED_EXIT == 143
    assert cleaned == ["inner", signal.SIG_IGN]
    assert signal.getsignal(signal.SIGTERM) is before
