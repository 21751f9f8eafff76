"""``accuwatt report RESULTS_DIR...``: Markdown report, PNG figures, CSV and Parquet from run folders.

Writes into ``--out`` (default ``report/``): ``report.md``, ``results.csv`` / ``results.parquet`` (one
row per run: means over splits), ``splits.csv`` / ``splits.parquet`` (one row per run and split) and
``figures/*.png``. Metrics are recomputed from ``records.jsonl`` (see ``serve_app.replay.summary``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from serve_app.replay.results import find_runs, load_run
from serve_app.report import figures
from serve_app.report.markdown import render_report
from serve_app.report.regression import fit_energy_duration
from serve_app.report.tables import results_frames


def build_report(paths: list[Path], out: Path) -> Path:
    runs = [load_run(p) for p in find_runs(paths)]
    if not runs:
        raise SystemExit(f"no run folders (run.json + records.jsonl) under {[str(p) for p in paths]}")
    means, splits = results_frames(runs)
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    for name, frame in (("results", means), ("splits", splits)):
        frame.to_csv(out / f"{name}.csv", index=False)
        frame.to_parquet(out / f"{name}.parquet", index=False)
    sections = []
    for dataset, df in means.groupby("dataset", sort=True):
        dsplits = splits[splits["dataset"] == dataset]
        e = dsplits[dsplits["energy_wh"].notna()]
        fit = (
            fit_energy_duration(e["energy_wh"].to_numpy(), e["duration_s"].to_numpy(), e["gpus"].to_numpy())
            if len(e) >= 2
            else None
        )
        slug = str(dataset).replace("/", "_")
        figs = {
            "scatter": figures.accuracy_energy_scatter(
                df, f"{dataset}: accuracy vs energy", figdir / f"{slug}_accuracy_energy.png"
            ),
            "components": figures.energy_components(
                df, f"{dataset}: energy by component", figdir / f"{slug}_energy_components.png"
            ),
            "regression": None
            if fit is None
            else figures.energy_duration(
                e, fit, f"{dataset}: energy vs duration", figdir / f"{slug}_energy_duration.png"
            ),
        }
        sections.append(
            (str(dataset), df, fit, {k: (v.relative_to(out) if v else None) for k, v in figs.items()})
        )
    path = out / "report.md"
    path.write_text(render_report(sections, [str(p) for p in paths]))
    return path


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="tables, figures, CSV and Parquet from replay results", description=__doc__
    )
    p.add_argument("results", nargs="+", type=Path, help="results folders (searched recursively for runs)")
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: report/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = build_report(list(args.results), args.out)
    print(path)
    return 0
