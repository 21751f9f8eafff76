"""`accuwatt cluster up` while a cluster it started still runs: refused in one line, the running
cluster stays recorded (before: the second `up` wrote over the record, so after its `down` the first
cluster ran on with no record, and `status` and `down` said no cluster was recorded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _up(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "cluster", "up", "--workers", "0", "--cpus-per-node", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()  # SIGTERM: the launcher stops its nodes
        p.wait(timeout=120)


def test_second_up_is_refused_and_the_first_stays_recorded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCUWATT_STATE_DIR": str(state)}
    record = state / "cluster.json"
    first = _up(env)
    second = None
    try:
        deadline = time.monotonic() + 240
        while not record.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert record.exists(), first.communicate()[1] if first.poll() is not None else "no record"
        second = _up(env)
        try:
            _, err = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            _stop(second)
            pytest.fail("a second `cluster up` started a cluster beside the recorded one")
        lines = err.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, err
        assert lines[0].startswith("accuwatt: error: ") and str(first.pid) in lines[0], err
        assert json.loads(record.read_text())["pid"] == first.pid
        down = subprocess.run(
            [sys.executable, "-m", "serve_app.cli", "cluster", "down"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert down.returncode == 0, down.stderr
        assert first.wait(timeout=120) == 0
        assert not record.exists()
    finally:
        if second is not None:
            _stop(second)
        _stop(first)
