"""Where a benchmark's machine-readable result goes: ``results/<benchmark>.json`` in the checkout unless
``--out`` names another file, written at every run beside the table it prints.

The file holds the result with what names the run: the benchmark, the arguments, the commit (with
``+dirty`` when the working tree had changes) and when it ran, so that a figure quoted in
``benchmarks/RESULTS.md`` can be traced to its run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "results"


def add_out_argument(ap: argparse.ArgumentParser, benchmark: str) -> None:
    """``--out PATH`` (default ``results/<benchmark>.json``)."""
    ap.add_argument(
        "--out",
        default=str(RESULTS_DIR / f"{benchmark}.json"),
        help="where the result goes as JSON (default: %(default)s)",
    )


def commit() -> str | None:
    """The checkout's commit, ``+dirty`` when tracked files differ from it; None outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def write_result(path: str | Path, benchmark: str, result: BaseModel | dict[str, Any]) -> Path:
    """Write ``result`` with what names its run to ``path`` (folders made as needed)."""
    body = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    doc = {
        "benchmark": benchmark,
        "argv": sys.argv[1:],
        "commit": commit(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "result": body,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return out
