"""The Markdown text of the report (pure: tables and fit in, text out)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serve_app.replay.units import STEADY_MIN_REQUESTS, STEADY_TRIM_FRACTION
from serve_app.report.regression import Fit
from serve_app.report.tables import (
    CARBON_COLUMNS,
    ENERGY_COLUMNS,
    STUDY_COLUMNS,
    UNITS_COLUMNS,
    markdown_table,
)

DEFINITIONS = """\
Definitions. *Energy* is the sum of the per-request energy tags (the energy the service attributed to
the run's requests); *idle* is the rest of what the replicas drew during the replay windows
(`/v1/energy` deltas: metered = attributed + idle). *Duration* runs from the first request sent to the
last answer. *Average power* = energy / duration. *Accuracy per Wh* = accuracy (0-1) / energy of one run
in Wh (one pass over the test set). *CO2e* = energy x the country's grid intensity. *CEGI (paper)* = CO2e (g) /
(accuracy gain over the training split's majority class in percentage points x TRAINABLE parameters in
millions), as the CEGI paper defines it; lower is better. Trainable parameters are what training
fitted (logistic-regression weights, XGBoost tree nodes; a frozen sentence encoder is not counted); a
zero-shot LLM has none, so its CEGI is n/a; the gain is n/a when the training majority is unknown (the
test labels are never the baseline). *CEGI over all parameters* is accuwatt's former variant (the same
ratio over all the model's parameters, frozen encoder or LLM weights included); it is not the paper's
index. Figures whose source is `estimate` are not measurements (CPU time x per-core
power + memory x W/GB); `mixed:` and `(partial)` sources say so where sources differ or tags are missing
(or a tag lacks a meter outage's energy: `meter_gap`).
All figures are means over the splits of each run, except the counts (errors, steady requests), which
are totals over them; accuracy per Wh and CEGI are n/a when a split has none (no energy, no gain). A model marked `(incomplete: n of m texts)` answered
fewer texts than its splits hold (a replay stopped before the end): its energy, duration and their
ratios cover those texts only and do not compare with a whole run's."""

UNITS_NOTE = f"""\
Units other studies publish, from the per-request energy tags (attributed energy; idle excluded). Scope:
the hardware column (`GPU only`, `CPU+DRAM`, `GPU+CPU+DRAM`) and, for software, what the tags covered
(`model`: the classifier's replica; `model+serving`: with its share of the router and the HTTP proxy,
as in the tables above). *J/request*: per HTTP request
(one text per request in the study protocol). *J/prompt token*, *J/output token*: all of a request's
energy over its prompt (input) or generated (output) tokens (LLMs only). *Steady*: the same over the
steady-state window (ML.ENERGY's J/output token): per session, the requests sent and answered between
{100 * STEADY_TRIM_FRACTION:g} % and {100 - 100 * STEADY_TRIM_FRACTION:g} % of the span from the first send to the last
answer; n/a with fewer than {STEADY_MIN_REQUESTS} requests.
*Wh/1k queries*: Wh per 1,000 classified texts, the AI Energy Score unit. *Source*: `nvml`/`rapl` are
measurements, `estimate` is not; `(partial)`: some requests (a failed one) carried no figure, and the
units are over the requests and texts that did, or a figure lacks a meter outage's energy (`meter_gap`)."""


ENERGY_NOTE = """\
*±*: the uncertainty of the run's energy. Each request's tag covers what can shift across its window's
two edges (`EnergyTag.uncertainty_j`); in the run's sum, an edge two back-to-back requests share moves
energy from one to the other and cancels, so what remains is the error at the two ends of each busy
stretch: the smaller of the requests' uncertainties summed and the stretches x the largest of them
(the sum alone when a request failed or a tag does not count its stretches). Where the replicas' node
account shares report their own figures over the replay (`/v1/energy` before and after), the run's
± is at most the drift their ticks showed during it, what they moved on top of their extrapolation,
and one edge error at each end, however many stretches the run had: the smaller figure is shown."""


def grid_intensities(df: pd.DataFrame) -> list[str]:
    """Each grid intensity the runs used, with its country and source (``DEU 380.95 gCO2e/kWh
    (codecarbon:2023)``), so a figure from another country's or a default grid is visible."""
    if "carbon_g_per_kwh" not in df:
        return []
    rows = df[df["carbon_g_per_kwh"].notna()]
    found = set()
    for _, r in rows.iterrows():
        country, source = r.get("carbon_country"), r.get("carbon_source")
        where = "country not recorded" if pd.isna(country) else str(country)
        how = "source not recorded" if pd.isna(source) else str(source)
        found.add(f"{where} {r['carbon_g_per_kwh']:g} gCO2e/kWh ({how})")
    return sorted(found)


def unlike_runs_notes(df: pd.DataFrame) -> list[str]:
    """Warnings above the study's table where its runs differ in what a row's figures are over: texts
    per split (energy per run and what scales with it), texts per request (J/request), or the splits
    themselves (another seed, split count, training or test size: every figure is over other texts, so
    a row's lead may be the splits', not the model's). Empty when the runs agree in all three."""
    lines: list[str] = []
    sizes = sorted({round(float(v), 6) for v in df["texts_per_split"]}) if "texts_per_split" in df else []
    if len(sizes) > 1:
        lines += [
            f"**These runs differ in texts per split ({', '.join(f'{v:g}' for v in sizes)})**: energy "
            "per run, CO2e, CEGI and accuracy per Wh grow or shrink with the texts, so they compare "
            "only runs of one size (the Pareto front too); J/request and Wh/1k queries do not depend on it.",
            "",
        ]
    batches = sorted({int(v) for v in df["batch_size"].dropna()}) if "batch_size" in df else []
    if len(batches) > 1:
        lines += [
            f"**These runs sent different numbers of texts per request ({', '.join(map(str, batches))})**: "
            "J/request (steady too) covers one request's texts, so it compares only runs of one batch "
            "size; Wh/1k queries is per text.",
            "",
        ]
    if "splits_replayed" in df and df["splits_replayed"].nunique(dropna=False) > 1:
        groups = [
            f"{', '.join(sorted(map(str, g['label'])))}: `{splits}`"
            for splits, g in df.groupby("splits_replayed", sort=True, dropna=False)
        ]
        lines += [
            "**These runs replayed different splits** (another seed, number of splits, training or test "
            "size): their accuracy, energy and every figure from them are over other texts or other "
            f"training, so they compare only runs of the same splits (the Pareto front too). {'; '.join(groups)}.",
            "",
        ]
    return lines


def render_report(
    sections: list[tuple[str, pd.DataFrame, Fit | None, dict[str, Path | None], int]],
    inputs: list[str],
    empty: list[str] | None = None,
) -> str:
    """The report; each section: (dataset, one row per run, the energy-vs-duration fit, its figures'
    paths, how many (run, split)s the fit left out because some of their requests have no energy);
    ``empty``: the run folders left out because they hold no record."""
    lines = [
        "# accuwatt report",
        "",
        f"Runs from: {', '.join(f'`{p}`' for p in inputs)}",
        "",
        DEFINITIONS,
        "",
    ]
    if empty:
        lines += [
            f"Left out, no request recorded: {', '.join(f'`{p}`' for p in empty)}.",
            "",
        ]
    for dataset, df, fit, figs, partial in sections:
        df = df.sort_values(["accuracy", "energy_wh"], ascending=[False, True])
        lines += [f"## {dataset}", "", "### Accuracy and energy (the study's table)", ""]
        lines += unlike_runs_notes(df)
        lines += [markdown_table(df, STUDY_COLUMNS), ""]
        if figs.get("scatter"):
            lines += [
                f"![accuracy vs energy]({figs['scatter']})",
                "",
                "Accuracy against energy per run (log energy axis); Pareto-optimal runs are ringed and "
                "joined (no other run is both cheaper and more accurate).",
                "",
            ]
        lines += ["### Carbon, CEGI and latency", "", markdown_table(df, CARBON_COLUMNS), ""]
        grids = grid_intensities(df)
        if grids:
            lines += [f"Grid intensity used: {'; '.join(grids)}.", ""]
        lines += ["### Comparable units", "", UNITS_NOTE, "", markdown_table(df, UNITS_COLUMNS), ""]
        lines += ["### Energy by component", "", ENERGY_NOTE, "", markdown_table(df, ENERGY_COLUMNS), ""]
        if figs.get("components"):
            lines += [f"![energy by component]({figs['components']})", ""]
        if fit is None and partial:
            lines += [
                "### Energy vs duration",
                "",
                "No fit: fewer than two per-split runs with energy for every request.",
                "",
            ]
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
        if partial:
            lines += [
                f"{partial} per-split run(s) left out of the energy-vs-duration fit: some of their "
                "requests have no energy (or part of it: `meter_gap`), so their sum is not the run's energy.",
                "",
            ]
    return "\n".join(lines) + "\n"
