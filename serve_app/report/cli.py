"""``accuwatt report RESULTS_DIR...``: Markdown report, PNG figures, CSV and Parquet from run folders.

Writes into ``--out`` (default ``report/``): ``report.md``, ``results.csv`` / ``results.parquet`` (one
row per run: means over splits), ``splits.csv`` / ``splits.parquet`` (one row per run and split) and
``figures/*.png``. Metrics are recomputed from ``records.jsonl`` (see ``serve_app.replay.summary``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from serve_app.argtypes import first_error
from serve_app.errors import UsageError
from serve_app.replay.records import Record
from serve_app.replay.results import (
    RECORDS_FILE,
    RUN_FILE,
    RunData,
    find_runs,
    load_run,
    record_problem,
    safe_name,
)
from serve_app.report import figures
from serve_app.report.markdown import render_report
from serve_app.report.regression import fit_energy_duration
from serve_app.report.tables import results_frames
from serve_app.sweep.compare import regression_rows
from serve_app.wire import RunInfo


def _load_runs(paths: list[Path]) -> list[RunData]:
    """The runs under ``paths``, each once (paths may overlap); a path that does not exist, holds no run
    folder, or holds a folder that is not an accuwatt run or whose records do not sum to one run
    (`record_problem`) is refused (`UsageError`), never skipped."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    runs = []
    seen: set[Path] = set()
    for p in paths:
        found = find_runs([p])
        if not found:
            raise UsageError(f"{p}: no run folders ({RUN_FILE} + {RECORDS_FILE}) there")
        for run_path in found:
            if run_path.resolve() in seen:  # overlapping paths (results results/demo): each run once
                continue
            seen.add(run_path.resolve())
            try:
                run = load_run(run_path)
            except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON, not a run or record
                raise UsageError(
                    f"{run_path}: not an accuwatt run folder: {_load_error(run_path, exc)}"
                ) from None
            problem = record_problem(run)
            if problem is not None:  # the figures would mix models or count requests twice
                raise UsageError(f"{run_path}: {problem}")
            runs.append(run)
    return runs


def _message(exc: Exception) -> str:
    return first_error(exc) if isinstance(exc, ValidationError) else " ".join(str(exc).split())


def _load_error(run_path: Path, exc: Exception) -> str:
    """Why `load_run` failed, naming the file, and for ``records.jsonl`` the line (a corrupt line
    among thousands is otherwise not to be found; ``gold: Field required`` alone does not say where)."""
    try:
        RunInfo.model_validate_json((run_path / RUN_FILE).read_text())
    except (OSError, ValueError) as run_exc:
        return f"{RUN_FILE}: {_message(run_exc)}"
    try:
        with (run_path / RECORDS_FILE).open("rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # a torn last line is ignored (`read_records`)
                try:
                    if raw.strip():
                        Record.model_validate_json(raw.strip())
                except ValueError as line_exc:
                    return f"{RECORDS_FILE} line {n}: {_message(line_exc)}"
    except OSError as rec_exc:
        return f"{RECORDS_FILE}: {_message(rec_exc)}"
    return _message(exc)


def _with_sections(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``section``: the dataset's name, and its data's fingerprint where runs of one name replayed
    different data (two files both named ``data.csv``), so they never share a table."""
    fps = df["fingerprint"].fillna("unknown").astype(str)
    several = {ds for ds, f in fps.groupby(df["dataset"]) if f.nunique() > 1}
    return df.assign(
        section=[
            f"{ds} (data {fp[:8]})" if ds in several else str(ds)
            for ds, fp in zip(df["dataset"], fps, strict=True)
        ]
    )


def _unique(slug: str, taken: set[str]) -> str:
    """``slug``, or ``slug_2``, ``slug_3``... when a section before took it (``a b`` and ``a_b`` both
    make ``a_b``: the second section's figures would overwrite the first's); added to ``taken``."""
    name, n = slug, 1
    while name in taken:
        n += 1
        name = f"{slug}_{n}"
    taken.add(name)
    return name


def _output_folders(out: Path) -> Path:
    """Create ``out`` and its ``figures`` folder (returned); a path where no folder can be made (a file
    named like it, no permission) is refused with one line, not a traceback."""
    figdir = out / "figures"
    try:
        out.mkdir(parents=True, exist_ok=True)
        figdir.mkdir(exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(
            f"--out {out}: cannot make the report folder there ({reason}: {exc.filename})"
        ) from None
    return figdir


FIGURE_SUFFIXES = ("_accuracy_energy.png", "_energy_components.png", "_energy_duration.png")
"""The names this report gives its figures (``<dataset>`` + suffix): the only files it removes."""


def _remove_stale_figures(figdir: Path, written: set[Path]) -> None:
    """Remove figures an earlier report left in a reused ``--out`` that this one did not draw (a
    dataset no longer in the results, a regression without enough runs this time), so the folder
    holds this report's figures only. Other files there are left alone."""
    for path in figdir.iterdir():
        if path.name.endswith(FIGURE_SUFFIXES) and path.is_file() and path not in written:
            path.unlink()


def build_report(paths: list[Path], out: Path) -> Path:
    runs = _load_runs(paths)
    means, splits = results_frames(runs)
    if means.empty:  # e.g. replays killed before their first answer
        raise UsageError(f"no answered requests in the runs under {', '.join(map(str, paths))}")
    figdir = _output_folders(out)
    for name, frame in (("results", means), ("splits", splits)):
        frame.to_csv(out / f"{name}.csv", index=False)
        frame.to_parquet(out / f"{name}.parquet", index=False)
    sections = []
    slugs: set[str] = set()
    written: set[Path] = set()
    means, splits = _with_sections(means), _with_sections(splits)
    for dataset, df in means.groupby("section", sort=True):
        # the sweep's rule: only (run, split)s with energy for every request (a partial sum is low)
        e, partial = regression_rows(splits[splits["section"] == dataset])
        fit = (
            fit_energy_duration(e["energy_wh"].to_numpy(), e["duration_s"].to_numpy(), e["gpus"].to_numpy())
            if len(e) >= 2
            else None
        )
        slug = _unique(safe_name(str(dataset)), slugs)  # a bare file name: a space would break the link
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
        written |= {v for v in figs.values() if v is not None}
        sections.append(
            (
                str(dataset),
                df,
                fit,
                {k: (v.relative_to(out) if v else None) for k, v in figs.items()},
                partial,
            )
        )
    _remove_stale_figures(figdir, written)
    path = out / "report.md"
    empty = [str(r.path) for r in runs if not r.records]  # killed before their first answer
    path.write_text(render_report(sections, [str(p) for p in paths], empty))
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
