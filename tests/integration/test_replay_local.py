"""`accuwatt replay --local`: per split, train on the split, deploy, replay, tear down; rerun resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.replay.records import read_records

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]


def test_local_protocol_two_splits(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "serve_app.cli",
        "replay",
        "--local",
        "--dataset",
        "demo",
        "--models",
        "tfidf-logreg",
        "--splits",
        "2",
        "--n-train",
        "120",
        "--n-test",
        "30",
        "--batch-size",
        "2",
        "--concurrency",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-5000:]
    # Serve's shutdown no longer prints Ray's "Task ServeController.graceful_shutdown failed ... will be
    # retried" between the replay and its report (env.DRIVER_ENV)
    assert "graceful_shutdown failed" not in done.stdout + done.stderr, done.stderr[-3000:]
    (records,) = list(tmp_path.rglob("records.jsonl"))
    recs = read_records(records)
    assert len(recs) == 30 and {r.split for r in recs} == {
        "seed20250101-split0-n120x30",
        "seed20250101-split1-n120x30",
    }
    assert all(r.ok and r.energy is not None for r in recs)
    run = json.loads((records.parent / "run.json").read_text())
    assert run["topology"]["model"]["id"] == "tfidf-logreg" and run["machine"]["cpu_logical"]
    assert set(run["splits"]) == {r.split for r in recs}
    # the models served on split i were trained on split i
    assert run["splits"]["seed20250101-split1-n120x30"]["index"] == 1
    # every split is a fresh deployment: the replay waits for the meters' first ticks, so each window
    # has its drift bound (it was null, and the first tags' ± the average power x the tick period)
    windows = [json.loads(line) for line in (records.parent / "windows.jsonl").read_text().splitlines()]
    assert len(windows) == 2 and all(w["energy_delta"]["uncertainty_j"] is not None for w in windows), windows
    metrics = json.loads((records.parent / "metrics.json").read_text())
    assert metrics["mean"]["n_splits"] == 2 and metrics["mean"]["idle_j"] is not None
    # a rerun of the same command has nothing left to send
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(read_records(records)) == 30
