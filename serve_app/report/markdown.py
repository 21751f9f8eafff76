"""The Markdown text of the report (pure: tables and fit in, text out)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serve_app.report.regression import Fit
from serve_app.report.tables import CARBON_COLUMNS, ENERGY_COLUMNS, STUDY_COLUMNS, markdown_table

DEFINITIONS = """\
Definitions. *Energy* is the sum of the per-request energy tags (the energy the service attributed to
the run's requests); *idle* is the rest of what the replicas drew during the replay windows
(`/v1/energy` deltas: metered = attributed + idle). *Duration* runs from the first request sent to the
last answer. *Average power* = energy / duration. *Accuracy per Wh* = accuracy (0-1) / energy of one run
in Wh (one pass over the test set). *CO2e* = energy x the country's grid intensity. *CEGI* = CO2e (g) /
(accuracy gain over the majority class in percentage points x parameters in millions); lower is better,
n/a when there is no gain. Figures whose source is `estimate` are not measurements (CPU time x per-core
power + memory x W/GB); `mixed:` and `(partial)` sources say so where sources differ or tags are missing.
All figures are means over the splits of each run."""


def render_report(
    sections: list[tuple[str, pd.DataFrame, Fit | None, dict[str, Path | None]]], inputs: list[str]
) -> str:
    lines = [
        "# accuwatt report",
        "",
        f"Runs from: {', '.join(f'`{p}`' for p in inputs)}",
        "",
        DEFINITIONS,
        "",
    ]
    for dataset, df, fit, figs in sections:
        df = df.sort_values(["accuracy", "energy_wh"], ascending=[False, True])
        lines += [
            f"## {dataset}",
            "",
            "### Accuracy and energy (the study's table)",
            "",
            markdown_table(df, STUDY_COLUMNS),
            "",
        ]
        if figs.get("scatter"):
            lines += [
                f"![accuracy vs energy]({figs['scatter']})",
                "",
                "Accuracy against energy per run (log energy axis); Pareto-optimal runs are ringed and "
                "joined (no other run is both cheaper and more accurate).",
                "",
            ]
        lines += ["### Carbon, CEGI and latency", "", markdown_table(df, CARBON_COLUMNS), ""]
        countries = sorted({str(c) for c in df.get("carbon_g_per_kwh", pd.Series(dtype=float)).dropna()})
        if countries:
            lines += [f"Grid intensity used: {', '.join(countries)} gCO2e/kWh.", ""]
        lines += ["### Energy by component", "", markdown_table(df, ENERGY_COLUMNS), ""]
        if figs.get("components"):
            lines += [f"![energy by component]({figs['components']})", ""]
        if fit is not None:
            r2 = "n/a" if fit.r2 is None else f"{fit.r2:.4f}"
            lines += [
                "### Energy vs duration",
                "",
                f"Least squares over {fit.n} per-split runs: `{fit.formula()}`, R² = {r2} "
                f"(terms kept: {', '.join(fit.terms)}; a term whose column does not vary is dropped).",
                "",
            ]
            if figs.get("regression"):
                lines += [f"![energy vs duration]({figs['regression']})", ""]
    return "\n".join(lines) + "\n"
