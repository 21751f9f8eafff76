"""The study's figures as PNG (matplotlib, Agg backend): accuracy vs energy with the Pareto front,
energy by component, energy vs duration with the regression fit. Each figure's title names the
energy's source(s) and scope(s) (`energy_caption`), and each draws a run whose energy is not wholly
measured apart from a measured one (an estimate is never shown as a measurement)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from serve_app.energy.base import MEASURED_SOURCES  # noqa: E402
from serve_app.report.regression import Fit, pareto_front  # noqa: E402

ENERGY_KINDS: dict[tuple[bool, bool], tuple[str, str, bool]] = {
    # (measured, partial): (legend label, marker, filled)
    (True, False): ("measured", "o", True),
    (True, True): ("measured, partial (requests without a figure)", "s", False),
    (False, False): ("estimate (not measured)", "^", False),
    (False, True): ("estimate (not measured), partial", "v", False),
}
"""How a run's energy is drawn: a measurement is never marked as an estimate, and a figure that
misses some requests' tags (``energy_missing``: a failed request has none) is marked partial."""


def energy_kinds(df: pd.DataFrame) -> list[tuple[bool, bool]]:
    """Each row's key in `ENERGY_KINDS`: (its tags all measured, some requests without a tag)."""
    partial = df["energy_missing"].fillna(0).astype(int) > 0
    return [(bool(m), bool(p)) for m, p in zip(df["measured"], partial, strict=True)]


def _distinct(df: pd.DataFrame, column: str) -> list[str]:
    if column not in df:
        return ["not recorded"]
    return sorted({str(v) for v in df[column] if v is not None and not pd.isna(v)}) or ["not recorded"]


def energy_caption(df: pd.DataFrame) -> str:
    """The source(s) and scope(s) of the energy a figure draws, for its title: a figure read on its own
    says whether its figures are measured (``rapl``, ``nvml``) or estimated, and what they cover."""
    sources = [
        s if all(p in MEASURED_SOURCES for p in _source_parts(s)) else f"{s} (not measured)"
        for s in _distinct(df, "energy_source")
    ]
    return f"energy source: {', '.join(sources)}; scope: {'; '.join(_distinct(df, 'energy_scope'))}"


def _source_parts(source: str) -> list[str]:
    """The sources in a label (``mixed:estimate+rapl (partial)``: estimate, rapl)."""
    return source.replace(" (partial)", "").removeprefix("mixed:").split("+")


def bar_labels(df: pd.DataFrame) -> list[str]:
    """Each row's label, marked ``(estimate)`` when its energy is not wholly measured."""
    return [
        str(label) if bool(measured) else f"{label} (estimate)"
        for label, measured in zip(df["label"], df["measured"], strict=True)
    ]


def _save(fig: Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def accuracy_energy_scatter(df: pd.DataFrame, title: str, out: Path) -> Path | None:
    """Accuracy against energy per run (log energy axis), drawn by `ENERGY_KINDS`; Pareto-optimal
    runs joined and ringed."""
    fig = draw_accuracy_energy(df, title)
    return None if fig is None else _save(fig, out)


def draw_accuracy_energy(df: pd.DataFrame, title: str) -> Figure | None:
    """The figure of `accuracy_energy_scatter` (None without a run with energy)."""
    d = df[df["energy_wh"].notna() & (df["energy_wh"] > 0)].sort_values("energy_wh")
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    front = pareto_front(d["energy_wh"].to_numpy(), d["accuracy"].to_numpy())
    kinds = energy_kinds(d)
    for kind, (label, marker, filled) in ENERGY_KINDS.items():
        part = d[[k == kind for k in kinds]]
        if part.empty:
            continue
        ax.scatter(
            part["energy_wh"],
            part["accuracy"],
            s=45,
            marker=marker,
            facecolors="tab:blue" if filled else "none",
            edgecolors="tab:blue",
            label=label,
            zorder=3,
        )
    pf = d[front]
    ax.plot(pf["energy_wh"], pf["accuracy"], "--", color="tab:red", lw=1.2, label="Pareto front", zorder=2)
    ax.scatter(
        pf["energy_wh"], pf["accuracy"], s=160, facecolors="none", edgecolors="tab:red", lw=1.5, zorder=4
    )
    for _, r in d.iterrows():
        ax.annotate(
            str(r["label"]),
            (r["energy_wh"], r["accuracy"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("energy per run (Wh, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\n{energy_caption(d)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def energy_components(df: pd.DataFrame, title: str, out: Path) -> Path | None:
    """Stacked bars per run: attributed CPU, GPU and DRAM energy, and the idle energy on top."""
    fig = draw_energy_components(df, title)
    return None if fig is None else _save(fig, out)


def draw_energy_components(df: pd.DataFrame, title: str) -> Figure | None:
    """The figure of `energy_components` (None without a run with energy); a run whose energy is not
    wholly measured is labelled ``(estimate)`` and its bars drawn pale."""
    d = df[df["energy_wh"].notna()].sort_values("energy_wh")
    if d.empty:
        return None
    labels = bar_labels(d)
    alpha = [1.0 if bool(m) else 0.45 for m in d["measured"]]
    x = np.arange(len(d))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(d) + 2), 4.8))
    bottom = np.zeros(len(d))
    colors = {"cpu_wh": "tab:blue", "gpu_wh": "tab:green", "dram_wh": "tab:orange", "idle_wh": "lightgray"}
    names = {"cpu_wh": "CPU", "gpu_wh": "GPU", "dram_wh": "DRAM", "idle_wh": "idle (not attributed)"}
    for col, color in colors.items():
        vals = d[col].fillna(0.0).to_numpy(float) if col in d else np.zeros(len(d))
        if not vals.any():
            continue
        bars = ax.bar(
            x,
            vals,
            bottom=bottom,
            color=color,
            label=names[col],
            hatch="//" if col == "idle_wh" else None,
            edgecolor="white",
        )
        for bar, a in zip(bars, alpha, strict=True):
            bar.set_alpha(a)
        bottom += vals
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("energy per run (Wh)")
    ax.set_title(f"{title}\n{energy_caption(d)}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def energy_duration(df: pd.DataFrame, fit: Fit, title: str, out: Path) -> Path | None:
    """Per-split runs: energy against duration, coloured by GPU count, with the fitted lines."""
    fig = draw_energy_duration(df, fit, title)
    return None if fig is None else _save(fig, out)


def draw_energy_duration(df: pd.DataFrame, fit: Fit, title: str) -> Figure | None:
    """The figure of `energy_duration` (None without a run with energy); estimated points are hollow."""
    d = df[df["energy_wh"].notna()]
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for i, gpus in enumerate(sorted(int(v) for v in d["gpus"].unique())):
        part = d[d["gpus"] == gpus]
        name, color = (f"{gpus} GPU" if gpus else "CPU only"), f"C{i % 10}"
        measured = part["measured"].astype(bool)
        if measured.any():
            m = part[measured]
            ax.scatter(m["duration_s"], m["energy_wh"], s=25, alpha=0.8, color=color, label=name)
        if not measured.all():
            e = part[~measured]
            ax.scatter(
                e["duration_s"],
                e["energy_wh"],
                s=25,
                facecolors="none",
                edgecolors=color,
                label=f"{name}, estimate (not measured)",
            )
        xs = np.linspace(0, float(d["duration_s"].max()) * 1.05, 50)
        ax.plot(xs, fit.predict(xs, np.full_like(xs, float(gpus))), color=color, lw=1)
    r2 = "n/a" if fit.r2 is None else f"{fit.r2:.3f}"
    ax.set_xlabel("duration of the run (s)")
    ax.set_ylabel("energy per run (Wh)")
    ax.set_title(f"{title}\n{fit.formula()}   R² = {r2}   n = {fit.n}\n{energy_caption(d)}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig
