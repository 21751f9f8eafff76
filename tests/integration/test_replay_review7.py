"""``accuwatt demo`` ended by SIGTERM, review 7: it stops its local Ray and removes the folders it made
(``aw-ray-*``, ``accuwatt-demo-*``), as Ctrl-C does, and nothing else. Before, ``ray.init`` replaced the
SIGTERM handler with its core worker's, which aborted the process (status -6) and left both behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]
REPO = Path(__file__).resolve().parents[2]


def test_sigterm_to_a_running_demo_removes_what_it_made_and_only_that(tmp_path: Path) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text(
        json.dumps(
            {
                "artifacts_dir": str(tmp_path / "art"),
                "train_if_missing": {"dataset": "demo", "n_train": 40, "n_test": 150},
                "classifiers": [{"kind": "traditional", "id": "bow-logreg"}],
            }
        )
    )
    # the demo's own temporary folders go to a TMPDIR of this test's (short: Ray's socket paths)
    tmp = Path(tempfile.mkdtemp(prefix="aw7-", dir="/tmp"))
    decoys = [tmp / "aw-ray-not-this-demos", tmp / "accuwatt-demo-not-this-demos"]
    for d in decoys:
        d.mkdir()
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
        argv = ["demo", "--config", str(config), "--num-cpus", "2", "--concurrency", "1", "--no-progress"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            # started: Ray up, the app deployed and the replay under way (its first records written)
            while not list(tmp.glob("accuwatt-demo-*/**/records.jsonl")):
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.stdout else ""
                assert time.monotonic() < deadline, "the demo did not start replaying"
                time.sleep(0.1)
            made = sorted(p.name for p in tmp.iterdir() if p not in decoys)
            assert any(n.startswith("aw-ray-") for n in made), made
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=120)[0].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
        assert "terminated (SIGTERM)" in out, out[-3000:]
        left = sorted(p.name for p in tmp.iterdir())
        assert not [n for n in left if n.startswith(("aw-ray-", "accuwatt-demo-")) and tmp / n not in decoys]
        assert all(d.is_dir() for d in decoys), left  # only what the demo made
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
