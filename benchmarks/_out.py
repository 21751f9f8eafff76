"""Where a benchmark's machine-readable result goes: ``results/<benchmark>.json`` in the checkout unless
``--out`` names another file, written at every run beside the table it prints.

The file holds the result with what names the run: the benchmark, the arguments, the commit (with
``+dirty`` when the working tree had changes, as ``run.json`` records it) and when it ran, so that a
figure quoted in ``benchmarks/RESULTS.md`` can be traced to its run.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from serve_app.replay.metadata import git_commit

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def add_out_argument(ap: argparse.ArgumentParser, benchmark: str) -> None:
    """``--out PATH`` (default ``results/<benchmark>.json``); the parsed arguments carry the name."""
    ap.add_argument(
        "--out",
        default=str(RESULTS_DIR / f"{benchmark}.json"),
        help="where the result goes as JSON (default: %(default)s)",
    )
    ap.set_defaults(benchmark=benchmark)


def write_result(args: argparse.Namespace, result: BaseModel | dict[str, Any]) -> Path:
    """Write ``result`` with what names its run to ``args.out`` (folders made as needed)."""
    body = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    doc = {
        "benchmark": args.benchmark,
        "argv": sys.argv[1:],
        "commit": git_commit(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "result": body,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return out
