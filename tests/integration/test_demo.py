"""`accuwatt demo` end to end in a subprocess: its own Ray, the local deployment, 200 texts, a table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]


def test_demo_prints_the_table_and_keeps_records(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serve_app.cli",
            "demo",
            "--models",
            "tfidf-logreg,bow-logreg",
            "--concurrency",
            "4",
            "--out",
            str(out),
            "--no-progress",
            "--config",
            str(REPO / "deployments" / "local.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert "accuracy" in lines[header] and "J/request" in lines[header] and "p50 latency" in lines[header]
    rows = {line.split()[0]: line.split() for line in lines[header + 2 : header + 4]}
    assert set(rows) == {"tfidf-logreg", "bow-logreg"}
    for cells in rows.values():
        assert 0.4 < float(cells[1]) <= 1.0  # accuracy on the 200 demo texts
        assert float(cells[2]) > 0  # J/request
        assert cells[3] in ("estimate", "rapl", "nvml", "nvml-power")
    records = list(out.rglob("records.jsonl"))
    assert len(records) == 2
    assert all(p.read_bytes().count(b"\n") == 200 for p in records)
    # Ray is gone: no raylet left behind by the demo's private cluster
    assert "Traceback" not in done.stdout
