"""`accuwatt replay`'s exit status: a run in which every request failed is no measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.cli import main
from serve_app.replay.echo_server import EchoServer, EchoState

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


def _test_file(tmp_path: Path, n: int = 6) -> Path:
    path = tmp_path / "test.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": f"text {i}", "label": ("OTHER", "OFFENSE")[i % 2]}) + "\n" for i in range(n)
        )
    )
    return path


def _replay(url: str, test_file: Path, out: Path, *extra: str) -> int:
    argv = ["replay", "--url", url, "--models", "echo", "--test-file", str(test_file), "--out", str(out)]
    return main([*argv, "--no-progress", *extra])


def test_a_replay_whose_every_request_failed_exits_1_with_one_line(tmp_path, capsys) -> None:
    """Every request timed out (the service answers after 1 s, the replay waits 0.2 s): the records
    say so, and the command said nothing and exited 0, so a script took the run as measured."""
    test_file = _test_file(tmp_path, n=2)
    with EchoServer(EchoState(delay_s=1.0)) as srv:
        status = _replay(srv.url, test_file, tmp_path / "out", "--timeout-s", "0.2", "--concurrency", "2")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    (line,) = [x for x in err if x.startswith("accuwatt: error:")]
    assert "every request" in line and "failed" in line
    (records,) = (tmp_path / "out").rglob("records.jsonl")
    rows = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(rows) == 2 and all(r.get("error") for r in rows)


def test_a_replay_with_some_answers_exits_0(tmp_path) -> None:
    """A run whose requests were answered is a measurement (and one with some failures, an overload
    run's, is one too: its failures are in the records)."""
    with EchoServer(EchoState()) as srv:
        assert _replay(srv.url, _test_file(tmp_path), tmp_path / "out") == 0
