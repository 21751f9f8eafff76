"""Scenarios that need a Ray driver of their own (a local multi-node cluster) run in a subprocess: the
test session may already hold the single-node Ray of ``tests/conftest.py``. Shared by the two-node
tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_scenario(module: str, out: Path, timeout_s: float = 900) -> dict[str, Any]:
    """Run ``module``'s ``_scenario(out)`` in a new process (and session) and return the JSON it
    wrote to ``out``; the test fails with the process's output if it does not exit 0."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from {module} import _scenario; _scenario({str(out)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        start_new_session=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"scenario failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return dict(json.loads(out.read_text()))


def wait_200(c: Any, url: str, timeout_s: float = 240.0) -> None:
    """Poll ``url`` with the httpx client ``c`` until it answers 200 (TimeoutError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if c.get(url).status_code == 200:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)
