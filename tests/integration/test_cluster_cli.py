"""``accuwatt cluster up|status|down`` through the real CLI: the record of what ``up`` started lives in
a private per-user folder (0700), and ``down`` signals a PID only while it is still the launcher it
recorded (same start time and command line)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO


def cli(state: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "cluster", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "ACCUWATT_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_state_folder_is_private(tmp_path: Path) -> None:
    """`status` makes no folder; `up` would make it 0700; a loose folder that exists is refused in one
    line and left as it is (a read-only command never changes a user's folder)."""
    fresh = tmp_path / "fresh" / "state"
    assert cli(fresh, "status").returncode == 1
    assert not fresh.exists()
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    p = cli(loose, "status")
    assert p.returncode == 2 and p.stderr.startswith("accuwatt: error: "), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert mode(loose) == 0o777


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours that is not a cluster launcher; it must survive `cluster down`."""
    p = subprocess.Popen(["sleep", "300"])
    yield p
    p.kill()
    p.wait()


def _record(state: Path, **rec: object) -> Path:
    state.mkdir(mode=0o700, exist_ok=True)
    path = state / "cluster.json"
    path.write_text(json.dumps({"state": str(state / "nothing.json"), **rec}))
    return path


def test_down_never_signals_a_pid_that_is_not_the_launcher(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    state = tmp_path / "state"
    real = psutil.Process(bystander.pid)
    launcher_cmd = [sys.executable, "-m", "serve_app.cli", "cluster", "up"]
    for rec in (
        {"pid": bystander.pid, "create_time": real.create_time() - 5.0, "cmdline": real.cmdline()},  # reused
        {"pid": bystander.pid, "create_time": real.create_time(), "cmdline": launcher_cmd},  # other command
        {"pid": bystander.pid},  # an old-style record without identity
    ):
        path = _record(state, **rec)
        p = cli(state, "down")
        assert p.returncode == 1 and "nothing signalled" in p.stderr, (p.stdout, p.stderr)
        assert not path.exists(), "the stale record was kept"
        time.sleep(0.2)
        assert bystander.poll() is None, "down signalled a process it did not start"
    _record(state, pid=bystander.pid, create_time=real.create_time(), cmdline=real.cmdline())
    p = cli(state, "down")
    assert p.returncode == 0, p.stderr
    assert bystander.wait(timeout=10) == -15  # the recorded identity matches: SIGTERM


def test_up_status_down(tmp_path: Path) -> None:
    """A real one-node cluster: `up` records itself privately, `status` answers, `down` stops it."""
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCUWATT_STATE_DIR": str(state)}
    up = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "cluster", "up", "--workers", "0", "--cpus-per-node", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        record = state / "cluster.json"
        while not record.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert record.exists(), up.stdout.read() if up.poll() is not None and up.stdout else "no record"
        assert mode(state) == 0o700 and mode(record) == 0o600
        rec = json.loads(record.read_text())
        assert rec["pid"] == up.pid and rec["cmdline"][-4:] == ["--workers", "0", "--cpus-per-node", "1"]
        st = cli(state, "status")
        assert st.returncode == 0 and json.loads(st.stdout)["launcher_pid"] == up.pid, st.stderr
        down = cli(state, "down")
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=120) == 0, up.stdout.read() if up.stdout else ""
        assert not record.exists()
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=60)
