"""`accuwatt sweep cluster/topologies/cpu-smoke.yaml`: two topologies (one node, two nodes) deployed in
turn on fresh local clusters, the same demo split replayed on each, and a report that compares them.
Runs in a subprocess (its own Ray drivers) so the session's single-node Ray is not disturbed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_cpu_smoke_sweep_compares_one_and_two_nodes(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code = (
        "import sys; from pathlib import Path; from serve_app.sweep.runner import run_sweep; "
        f"print(run_sweep(Path('cluster/topologies/cpu-smoke.yaml'), Path({str(out)!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        start_new_session=True,
        env={**__import__("os").environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    md = (out / "report" / "sweep.md").read_text()
    assert "### Single vs double node" in md and "### Energy vs duration (all runs)" in md
    assert "energy_wh = " in md
    import pandas as pd

    nodes = pd.read_csv(out / "report" / "sweep_nodes.csv")
    assert set(nodes["model"]) == {"bow-logreg", "tfidf-logreg"}
    assert (nodes["energy_ratio"] > 0).all() and (nodes["duration_ratio"] > 0).all()
    assert (out / "report" / "report.md").exists()
    for topo in ("1node", "2nodes"):
        assert any((out / "runs").glob(f"*/{topo}/*/*/records.jsonl")), topo
