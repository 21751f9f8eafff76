"""What a sweep adds to ``accuwatt report``: single vs double node, the GPU count effect, and the
energy-vs-duration regression across every run of the sweep (pure over the report's frames)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from serve_app.report.regression import Fit, fit_energy_duration
from serve_app.report.tables import results_frames

NODES_TABLE = "### Single vs double node"
GPUS_TABLE = "### Effect of the GPU count"
REGRESSION = "### Energy vs duration (all runs)"


def with_settings(df: pd.DataFrame, settings: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Add the sweep's ``nodes`` and ``gpus_setting`` columns by topology name."""
    return df.assign(
        nodes=[settings.get(t, {}).get("nodes") for t in df["topology"]],  # type: ignore[misc]
        gpus_setting=[settings.get(t, {}).get("gpus", 0) for t in df["topology"]],
    )


def _ratio(a: Any, b: Any) -> float | None:
    return float(a) / float(b) if a is not None and b and pd.notna(a) and pd.notna(b) else None


def nodes_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and GPU count: energy and duration on one node vs two nodes, and their ratios."""
    rows = []
    for (model, gpus), g in df.groupby(["model", "gpus_setting"]):
        one, two = g[g["nodes"] == 1], g[g["nodes"] == 2]
        if one.empty or two.empty:
            continue
        e1, e2 = one["energy_wh"].iloc[0], two["energy_wh"].iloc[0]
        d1, d2 = one["duration_s"].iloc[0], two["duration_s"].iloc[0]
        rows.append(
            {
                "model": model,
                "gpus": gpus,
                "energy_wh_1node": e1,
                "energy_wh_2nodes": e2,
                "energy_ratio": _ratio(e2, e1),
                "duration_s_1node": d1,
                "duration_s_2nodes": d2,
                "duration_ratio": _ratio(d2, d1),
                "accuracy_1node": one["accuracy"].iloc[0],
                "accuracy_2nodes": two["accuracy"].iloc[0],
            }
        )
    return pd.DataFrame(rows)


def gpus_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, single-node runs: energy, duration and power by GPU count, ratios to the fewest GPUs."""
    rows = []
    for model, g in df[df["nodes"] == 1].groupby("model"):
        g = g.sort_values("gpus_setting")
        if g["gpus_setting"].nunique() < 2:
            continue
        base = g.iloc[0]
        for _, r in g.iterrows():
            rows.append(
                {
                    "model": model,
                    "gpus": r["gpus_setting"],
                    "energy_wh": r["energy_wh"],
                    "duration_s": r["duration_s"],
                    "avg_power_w": r["avg_power_w"],
                    "energy_ratio": _ratio(r["energy_wh"], base["energy_wh"]),
                    "duration_ratio": _ratio(r["duration_s"], base["duration_s"]),
                }
            )
    return pd.DataFrame(rows)


def regression(splits: pd.DataFrame) -> Fit | None:
    e = splits[splits["energy_wh"].notna()]
    if len(e) < 2:
        return None
    return fit_energy_duration(
        e["energy_wh"].to_numpy(), e["duration_s"].to_numpy(), e["gpus_setting"].fillna(0).to_numpy()
    )


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no pairs in this sweep_"
    cols = list(df.columns)
    fmt = [
        lambda v: (
            ""
            if v is None or (isinstance(v, float) and pd.isna(v))
            else (f"{v:.4g}" if isinstance(v, float) else str(v))
        )
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt[0](r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def sweep_report(runs: list[Any], settings: dict[str, dict[str, Any]], title: str, out: Path) -> Path:
    """Write ``sweep.md`` and ``sweep_*.csv`` into ``out``; returns the Markdown path."""
    means, splits = results_frames(runs)
    means, splits = with_settings(means, settings), with_settings(splits, settings)
    nodes, gpus, fit = nodes_table(means), gpus_table(means), regression(splits)
    out.mkdir(parents=True, exist_ok=True)
    nodes.to_csv(out / "sweep_nodes.csv", index=False)
    gpus.to_csv(out / "sweep_gpus.csv", index=False)
    lines = [
        f"# Topology sweep: {title}",
        "",
        "Energy is attributed energy (Wh per run over a split's test "
        "set, mean over splits); ratios are two nodes / one node and n GPUs / fewest GPUs.",
        "",
        NODES_TABLE,
        "",
        _md(nodes),
        "",
        GPUS_TABLE,
        "",
        _md(gpus),
        "",
        REGRESSION,
        "",
    ]
    if fit is None:
        lines.append("_fewer than two runs with energy_")
    else:
        r2 = "n/a" if fit.r2 is None else f"{fit.r2:.4f}"
        lines += [f"`{fit.formula()}` (R² = {r2}, n = {fit.n} runs x splits; devices = GPUs per replica)"]
    path = out / "sweep.md"
    path.write_text("\n".join(lines) + "\n")
    return path
