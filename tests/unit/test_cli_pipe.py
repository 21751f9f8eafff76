"""A reader that goes away (`accuwatt evaluate --json | head`) ends the command quietly with the shell's
status for a pipe's writer (141), not with a BrokenPipeError traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# --json: more than a pipe's buffer, the print fails; the table: small, it failed at the exit's flush
@pytest.mark.parametrize("argv", [["--json"], []], ids=["json", "table"])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, argv: list[str]) -> None:
    data = tmp_path / "d.jsonl"
    rows = [
        {"text": f"text number {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
        for i in range(60)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [
        "evaluate",
        "--models",
        "tfidf-logreg",
        "--dataset",
        str(data),
        "--n-train",
        "30",
        "--n-test",
        "20",
        *argv,
    ]
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "serve_app.cli", *argv],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr[-3000:]
