"""CI: what the demo printed and kept is a result, not just a table header.

Usage: python .ci/check_demo.py <demo log> <demo --out folder>
Checks: one row per model of the demo (six), each with an accuracy in (0.4, 1] on the 200 demo texts, a
positive J/request and a known energy source; 200 records per model, all answered; a run.json per model
naming the training split's majority class (the baseline of the gain and of CEGI). Exits 1 with one
line per problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from serve_app.demo import DEFAULT_MODELS

MODELS = set(DEFAULT_MODELS)
SOURCES = {"estimate", "rapl", "nvml", "nvml-power"}


def _number(cell: str) -> float:
    """A table cell's number; NaN (fails every check) for what is none, such as ``n/a``."""
    try:
        return float(cell)
    except ValueError:
        return float("nan")


def problems(log: str, out: Path) -> list[str]:
    lines = log.splitlines()
    try:
        header = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["model", "accuracy", "J/request"])
    except StopIteration:
        return ["no result table"]
    rows = {}
    for ln in lines[header + 2 :]:
        cells = ln.split()
        if not cells or cells[0] not in MODELS:
            break
        rows[cells[0]] = cells
    found = []
    if set(rows) != MODELS:
        found.append(f"table rows {sorted(rows)}, expected {sorted(MODELS)}")
    for model, cells in rows.items():
        if not 0.4 < _number(cells[1]) <= 1.0:
            found.append(f"{model}: accuracy {cells[1]}")
        if not _number(cells[2]) > 0:  # "n/a" when no request carried a figure
            found.append(f"{model}: J/request {cells[2]}")
        if cells[3] not in SOURCES:
            found.append(f"{model}: source {cells[3]}")
    for model in MODELS:
        recs = list(out.rglob(f"{model}/*/records.jsonl"))
        if len(recs) != 1:
            found.append(f"{model}: {len(recs)} records files under {out}")
            continue
        lines_ = [json.loads(x) for x in recs[0].read_text().splitlines() if x.strip()]
        ok = sum(1 for r in lines_ if r.get("error") is None and r.get("predicted"))
        if len(lines_) != 200 or ok != 200:
            found.append(f"{model}: {len(lines_)} records, {ok} answered (expected 200)")
        splits = json.loads((recs[0].parent / "run.json").read_text()).get("splits") or {}
        if not splits or any(s.get("majority_label") is None for s in splits.values()):
            found.append(f"{model}: run.json names no training majority class ({splits})")
    return found


if __name__ == "__main__":
    found = problems(Path(sys.argv[1]).read_text(errors="replace"), Path(sys.argv[2]))
    for p in found:
        print(f"ci: demo check: {p}", file=sys.stderr)
    sys.exit(1 if found else 0)
