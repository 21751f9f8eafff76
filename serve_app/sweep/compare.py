"""What a sweep adds to ``accuwatt report``: single vs double node, the GPU count effect, and the
energy-vs-duration regression across every run of the sweep (pure over the report's frames).

Two runs' energies are compared as a ratio only where they cover the same requests and the same
energy: an energy ratio is left empty, with a ``note`` saying why, where the runs' texts replayed
(``n_texts``: a run cut short covers fewer), failed requests (``n_errors``), requests without energy
(``energy_missing``), energy sources or energy scopes (``energy_scope``: the hardware domains, and
whether the serving overhead is in) differ, or either has no energy; where the texts differ the
duration ratio is left empty too. GPU counts are
the ones each run recorded (``run.json``: ``topology.gpus``, from the model's ``/v1/models`` devices),
not the topology's setting: a CPU model deployed in a 4-GPU topology ran on 0 GPUs.

A pair of topologies may differ in more than the quantity its table compares (a one-node topology
with one replica against a two-node one with two): every row says in ``also_differs_in`` which other
settings of the sweep file differ (``SETTINGS``; for the GPU table, the settings that make the GPU
count, ``gpus``, ``tensor_parallel`` and ``pipeline_parallel``, are what it compares), so such a ratio
is not read as the effect of the node or GPU count alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serve_app.errors import UsageError
from serve_app.report.regression import Fit, fit_energy_duration
from serve_app.report.tables import results_frames

NODES_TABLE = "### Single vs double node"
GPUS_TABLE = "### Effect of the GPU count"
REGRESSION = "### Energy vs duration (all runs)"
FAILED = "### Failed topologies"
_SIDES = ("1node", "2nodes")
SETTINGS = (
    "gpus",
    "tensor_parallel",
    "pipeline_parallel",
    "replicas",
    "split_stages",
    "placement_strategy",
    "cpus_per_node",
)
"""The ``Topology`` settings, besides ``nodes``, a comparison row names where its two runs differ."""
_GPU_COUNT = ("gpus", "tensor_parallel", "pipeline_parallel")
ALSO_DIFFERS = "also_differs_in"
NODES_COLUMNS = [
    "model",
    *(f"{q}_{side}" for q in ("topology", "gpus", "energy_wh") for side in _SIDES),
    "energy_ratio",
    *(f"duration_s_{side}" for side in _SIDES),
    "duration_ratio",
    *(f"{q}_{side}" for q in ("accuracy", "n_errors", "energy_missing", "energy_source") for side in _SIDES),
    ALSO_DIFFERS,
    "note",
]
GPUS_COLUMNS = [
    "model",
    "topology",
    "gpus",
    "energy_wh",
    "duration_s",
    "avg_power_w",
    "n_errors",
    "energy_missing",
    "energy_source",
    "energy_ratio",
    "duration_ratio",
    ALSO_DIFFERS,
    "note",
]


def _setting_column(key: str) -> str:
    return "gpus_setting" if key == "gpus" else f"setting_{key}"


def with_settings(df: pd.DataFrame, settings: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Add the sweep's ``nodes`` and ``gpus_setting`` columns by topology name, and a ``setting_<key>``
    column for each other setting in ``SETTINGS`` that ``settings`` give (a topology's
    ``Topology.model_dump()``)."""
    given = [k for k in SETTINGS[1:] if any(k in v for v in settings.values())]
    if df.empty:
        empty = {c: pd.Series(dtype=object) for c in ("nodes", "gpus_setting", *map(_setting_column, given))}
        return df.assign(**empty)
    topos = list(df["topology"])

    def column(key: str) -> pd.Series:
        return pd.Series([settings.get(t, {}).get(key) for t in topos], index=df.index, dtype=object)

    return df.assign(
        nodes=[settings.get(t, {}).get("nodes") for t in topos],  # type: ignore[misc]
        gpus_setting=[settings.get(t, {}).get("gpus", 0) for t in topos],
        **{_setting_column(k): column(k) for k in given},
    )


def also_differs(a: pd.Series, b: pd.Series, compared: tuple[str, ...] = ()) -> str | None:
    """The topology settings besides the node count (and ``compared``) in which runs ``a`` and ``b``
    differ, e.g. ``replicas 1 vs 2; placement_strategy default vs SPREAD``; None where none does (or
    the settings are not known)."""
    out = []
    for key in SETTINGS:
        col = _setting_column(key)
        if key in compared or col not in a.index or col not in b.index:
            continue
        va, vb = a[col], b[col]
        if _missing(va) and _missing(vb) or va == vb:
            continue
        out.append(f"{key} {_setting_text(va)} vs {_setting_text(vb)}")
    return "; ".join(out) or None


def _setting_text(v: Any) -> str:
    return "default" if _missing(v) else str(v)


def _missing(v: Any) -> bool:
    return v is None or bool(pd.isna(v))


def _ratio(a: Any, b: Any) -> float | None:
    return None if _missing(a) or _missing(b) or not b else float(a) / float(b)


def _int(v: Any) -> int:
    return 0 if _missing(v) else int(v)


def texts_differ(a: pd.Series, b: pd.Series) -> str | None:
    """``texts replayed differ (x vs y)`` where runs ``a`` and ``b`` cover different numbers of texts
    (one cut short, e.g. a sweep interrupted and not rerun for that topology): their energies and
    durations are over different work."""
    ta, tb = _int(a.get("n_texts")), _int(b.get("n_texts"))
    return f"texts replayed differ ({ta} vs {tb})" if ta != tb else None


def not_comparable(a: pd.Series, b: pd.Series) -> str | None:
    """Why the energies of runs ``a`` and ``b`` make no ratio (``None`` where they do): either has no
    energy, or they differ in texts replayed, failed requests, requests without energy, energy source
    or energy scope."""
    why = []
    if _missing(a.get("energy_wh")) or _missing(b.get("energy_wh")):
        both = _missing(a.get("energy_wh")) and _missing(b.get("energy_wh"))
        why.append("no energy in " + ("either run" if both else "one run"))
    texts = texts_differ(a, b)
    if texts:
        why.append(texts)
    ea, eb = _int(a.get("n_errors")), _int(b.get("n_errors"))
    if ea != eb:
        why.append(f"failed requests differ ({ea} vs {eb})")
    ma, mb = _int(a.get("energy_missing")), _int(b.get("energy_missing"))
    if ma != mb:
        why.append(f"requests without energy differ ({ma} vs {mb})")
    sa, sb = a.get("energy_source"), b.get("energy_source")
    if not _missing(sa) and not _missing(sb) and sa != sb:
        why.append(f"energy sources differ ({sa} vs {sb})")
    ca, cb = a.get("energy_scope"), b.get("energy_scope")
    if all(not _missing(c) and c != "unknown" for c in (ca, cb)) and ca != cb:
        why.append(f"energy scopes differ ({ca} vs {cb})")
    return "; ".join(why) or None


def refuse_duplicates(df: pd.DataFrame) -> None:
    """A sweep compares one run per model and topology: several (e.g. an older run with other settings
    in the same ``--out``) are refused, naming their folders, rather than one picked."""
    if df.empty:
        return
    dup = df[df.duplicated(["model", "topology"], keep=False)]
    if not dup.empty:
        (model, topo), g = next(iter(dup.groupby(["model", "topology"], sort=True)))
        paths = ", ".join(str(p) for p in g["path"]) if "path" in g else f"{len(g)} runs"
        raise UsageError(
            f"{len(g)} runs of {model} on topology {topo} ({paths}): a sweep report compares one run per "
            "model and topology; remove the others or give them another --out"
        )


def nodes_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and GPU setting, every (one-node, two-node) pair of topologies: energy and duration,
    their ratios (two nodes / one node), accuracy, failed requests, requests without energy, energy
    sources and the GPUs each run recorded. The energy ratio is empty where ``note`` says why."""
    refuse_duplicates(df)
    rows: list[dict[str, Any]] = []
    if df.empty:
        return pd.DataFrame(rows, columns=NODES_COLUMNS)
    for (model, _setting), g in df.groupby(["model", "gpus_setting"], sort=True):
        ones = g[g["nodes"] == 1].sort_values("topology")
        twos = g[g["nodes"] == 2].sort_values("topology")
        for _, a in ones.iterrows():
            for _, b in twos.iterrows():
                note = not_comparable(a, b)
                rows.append(
                    {
                        "model": model,
                        "topology_1node": a["topology"],
                        "topology_2nodes": b["topology"],
                        "gpus_1node": _int(a.get("gpus")),
                        "gpus_2nodes": _int(b.get("gpus")),
                        "energy_wh_1node": a["energy_wh"],
                        "energy_wh_2nodes": b["energy_wh"],
                        "energy_ratio": None if note else _ratio(b["energy_wh"], a["energy_wh"]),
                        "duration_s_1node": a["duration_s"],
                        "duration_s_2nodes": b["duration_s"],
                        "duration_ratio": None
                        if texts_differ(a, b)
                        else _ratio(b["duration_s"], a["duration_s"]),
                        "accuracy_1node": a["accuracy"],
                        "accuracy_2nodes": b["accuracy"],
                        "n_errors_1node": _int(a.get("n_errors")),
                        "n_errors_2nodes": _int(b.get("n_errors")),
                        "energy_missing_1node": _int(a.get("energy_missing")),
                        "energy_missing_2nodes": _int(b.get("energy_missing")),
                        "energy_source_1node": a.get("energy_source"),
                        "energy_source_2nodes": b.get("energy_source"),
                        ALSO_DIFFERS: also_differs(a, b),
                        "note": note,
                    }
                )
    return pd.DataFrame(rows, columns=NODES_COLUMNS)


def gpus_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, single-node runs by the GPU count each run recorded: energy, duration and power,
    ratios to the run on the fewest GPUs. Models whose recorded GPU count never changes (e.g. a CPU
    model in every topology) are left out; an energy ratio is empty where ``note`` says why."""
    refuse_duplicates(df)
    rows: list[dict[str, Any]] = []
    if df.empty:
        return pd.DataFrame(rows, columns=GPUS_COLUMNS)
    for model, g in df[df["nodes"] == 1].groupby("model", sort=True):
        g = g.assign(gpus=[_int(v) for v in g["gpus"]]).sort_values(["gpus", "topology"])
        if g["gpus"].nunique() < 2:
            continue
        fewest = g[g["gpus"] == g["gpus"].min()]
        base = fewest.iloc[0] if len(fewest) == 1 else None
        for _, r in g.iterrows():
            if base is None:
                note: str | None = f"several topologies ran on {fewest['gpus'].iloc[0]} GPUs: no single base"
            else:
                note = not_comparable(r, base)
            rows.append(
                {
                    "model": model,
                    "topology": r["topology"],
                    "gpus": r["gpus"],
                    "energy_wh": r["energy_wh"],
                    "duration_s": r["duration_s"],
                    "avg_power_w": r["avg_power_w"],
                    "n_errors": _int(r.get("n_errors")),
                    "energy_missing": _int(r.get("energy_missing")),
                    "energy_source": r.get("energy_source"),
                    "energy_ratio": None
                    if note or base is None
                    else _ratio(r["energy_wh"], base["energy_wh"]),
                    "duration_ratio": None
                    if base is None or texts_differ(r, base)
                    else _ratio(r["duration_s"], base["duration_s"]),
                    ALSO_DIFFERS: None if base is None else also_differs(base, r, _GPU_COUNT),
                    "note": note,
                }
            )
    return pd.DataFrame(rows, columns=GPUS_COLUMNS)


def regression_rows(splits: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The (run, split) rows the regression fits: those with energy for every request; and how many
    rows with partial energy were left out."""
    if splits.empty:
        return splits, 0
    e = splits[splits["energy_wh"].notna()]
    complete = [_int(v) == 0 for v in e["energy_missing"]] if "energy_missing" in e else [True] * len(e)
    return e[complete], len(e) - sum(complete)


def regression(splits: pd.DataFrame) -> Fit | None:
    """Energy vs duration over every (run, split) with energy for all its requests; devices are the
    GPUs each run recorded."""
    e, _ = regression_rows(splits)
    if len(e) < 2:
        return None
    devices = np.asarray([_int(v) for v in e["gpus"]], float)
    return fit_energy_duration(e["energy_wh"].to_numpy(), e["duration_s"].to_numpy(), devices)


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no pairs in this sweep_"
    cols = list(df.columns)

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def sweep_report(
    runs: list[Any],
    settings: dict[str, dict[str, Any]],
    title: str,
    out: Path,
    failures: Mapping[str, str] | None = None,
) -> Path:
    """Write ``sweep.md`` and ``sweep_*.csv`` into ``out``; returns the Markdown path. ``runs`` must hold
    one run per model and topology (`refuse_duplicates`); ``failures`` (topology -> why) are listed."""
    means, splits = results_frames(runs)
    refuse_duplicates(means)
    means, splits = with_settings(means, settings), with_settings(splits, settings)
    nodes, gpus = nodes_table(means), gpus_table(means)
    fit = regression(splits)
    _, partial = regression_rows(splits)
    out.mkdir(parents=True, exist_ok=True)
    nodes.to_csv(out / "sweep_nodes.csv", index=False)
    gpus.to_csv(out / "sweep_gpus.csv", index=False)
    lines = [
        f"# Topology sweep: {title}",
        "",
        "Energy is attributed energy (Wh per run over a split's test "
        "set, mean over splits); ratios are two nodes / one node and n GPUs / fewest GPUs. GPUs are "
        "the count each run recorded (run.json). An energy ratio is left empty where `note` says why: "
        "the runs differ in texts replayed (then the duration ratio is empty too), failed requests, "
        "requests without energy, energy source or energy scope. `also_differs_in` names the topology "
        "settings other than the node count (GPU table: the GPU count) in which the two runs differ: "
        "there the ratio is not the effect of nodes or GPUs alone.",
        "",
    ]
    if failures:
        lines += [FAILED, ""]
        lines += [f"- `{name}`: {why}" for name, why in failures.items()]
        lines += ["", "Their runs are not in the tables below.", ""]
    lines += [
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
        lines.append("_fewer than two runs with energy for every request_")
    else:
        r2 = "n/a" if fit.r2 is None else f"{fit.r2:.4f}"
        lines += [f"`{fit.formula()}` (R² = {r2}, n = {fit.n} runs x splits; devices = GPUs per replica)"]
    if partial:
        lines += ["", f"{partial} run x split(s) left out: some of their requests have no energy."]
    path = out / "sweep.md"
    path.write_text("\n".join(lines) + "\n")
    return path
