"""Result tables: one row per run folder (mean over splits) and one per split (pure over RunData)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from serve_app.replay.results import RunData, run_metrics
from serve_app.replay.summary import J_PER_WH, RunMetrics


def _row(run: RunData, m: RunMetrics) -> dict[str, Any]:
    info = run.info
    gpus = info.topology.gpus
    row: dict[str, Any] = {
        "dataset": info.dataset,
        "fingerprint": info.fingerprint,
        "topology": info.topology_name,
        "run": info.run,
        "gpus": gpus,
        "devices": f"{gpus} GPU" if gpus else "CPU",
        "path": str(run.path),
        "carbon_country": info.carbon.country,
        "carbon_source": info.carbon.source,
        # the splits the run was to replay and did: runs of other splits (seed, sizes) score other texts
        "splits_replayed": ", ".join(sorted(set(info.splits) | {r.split for r in run.records})),
        # texts per request (--batch-size; a split's last request may hold fewer): what J/request covers
        "batch_size": max((len(r.gold) for r in run.records), default=None),
    }
    row.update(m.model_dump(exclude={"domains_j"}))
    # energy per run, its CO2e and accuracy per Wh scale with the texts a split holds
    row["texts_per_split"] = m.n_texts / m.n_splits
    for d in ("cpu", "gpu", "dram"):
        row[f"{d}_wh"] = m.domains_j[d] / J_PER_WH if d in m.domains_j else None
    row["idle_wh"] = None if m.idle_j is None else m.idle_j / J_PER_WH
    return row


def results_frames(runs: Sequence[RunData]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run: means over splits, one row per run and split)."""
    means: list[dict[str, Any]] = []
    splits: list[dict[str, Any]] = []
    for run in runs:
        per_split, mean = run_metrics(run)
        if mean is None:
            continue
        means.append(_row(run, mean))
        splits.extend(_row(run, m) for m in per_split)
    return _with_labels(pd.DataFrame(means)), _with_labels(pd.DataFrame(splits))


def _with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``label``: the model, plus its topology where a dataset has several, plus the run name where
    the same model and topology ran more than once."""
    if df.empty:
        return df
    labels = []
    for _, r in df.iterrows():
        same_ds = df[df["dataset"] == r["dataset"]]
        lab = str(r["model"])
        if same_ds["topology"].nunique() > 1:
            lab += f" [{r['topology']}]"
        runs = same_ds[(same_ds["model"] == r["model"]) & (same_ds["topology"] == r["topology"])][
            "run"
        ].nunique()
        if runs > 1:
            lab += f" ({r['run']})"
        planned = r.get("n_texts_planned")
        if planned is not None and not pd.isna(planned) and int(r["n_texts"]) < int(planned):
            # a killed run's figures cover fewer texts than its plan: never pass for a whole run
            lab += f" (incomplete: {int(r['n_texts'])} of {int(planned)} texts)"
        labels.append(lab)
    # the same model, topology and run name under two results folders (two machines' results): the
    # folder tells them apart, or two rows of one table (and two points of a figure) read alike
    keys = list(zip(df["dataset"], df["split"], labels, strict=True))
    labels = [
        f"{lab} ({path})" if keys.count(key) > 1 else lab
        for key, lab, path in zip(keys, labels, df["path"], strict=True)
    ]
    return df.assign(label=labels)


def _fmt(v: Any, spec: str, missing: str = "n/a") -> str:
    """One cell: ``|`` escaped (a topology or run name may hold one; it would split the row)."""
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return missing
    if not spec and isinstance(v, float) and v.is_integer():
        v = int(v)  # a count in a column pandas made float by a gap (None): 7419, never 7419.0
    text = format(v, spec) if spec else str(v)
    if spec.endswith("f") and isinstance(v, (int, float)) and v != 0 and float(text) == 0:
        text = format(v, ".2g")  # a fixed-point format would show a non-zero value (a gain of 0.04 pp) as 0
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, keys: Sequence[str]) -> str:
    """The rows of ``df`` under the ``keys`` columns, with their headers and formats from `COLUMNS`."""
    columns = [(k, *COLUMNS[k]) for k in keys]
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" if spec == "" else "---:" for _, _, spec in columns) + "|"
    lines = [head, sep]
    for _, r in df.iterrows():
        lines.append(
            "| "
            + " | ".join(
                _fmt(r.get(c), spec, "-" if c.endswith("_note") else "n/a") for c, _, spec in columns
            )
            + " |"
        )
    return "\n".join(lines)


COLUMNS: dict[str, tuple[str, str]] = {
    # column: (header, format spec); one header per quantity in every table
    "label": ("model", ""),
    "topology": ("topology", ""),
    "n_splits": ("splits", "d"),
    "texts_per_split": ("texts/split", ".4g"),
    "accuracy": ("accuracy", ".3f"),
    "energy_wh": ("energy (Wh)", ".3g"),
    "j_per_request": ("J/request", ".3g"),
    "duration_s": ("duration (s)", ".3g"),
    "avg_power_w": ("avg power (W)", ".3g"),
    "devices": ("devices", ""),
    "energy_source": ("energy source", ""),
    "accuracy_per_wh": ("accuracy per Wh", ".4g"),
    "macro_f1": ("macro-F1", ".3f"),
    "gain_pp": ("gain over majority (pp)", ".1f"),
    "wh_per_1k": ("Wh/1k queries", ".3g"),
    "co2e_g": ("CO2e (g)", ".3g"),
    "trainable_parameters": ("trainable parameters", ""),
    "cegi": ("CEGI (paper)", ".3g"),
    "cegi_note": ("CEGI n/a because", ""),
    "parameters": ("all parameters", ""),
    "cegi_all_parameters": ("CEGI over all parameters (accuwatt variant)", ".3g"),
    "latency_p50_s": ("p50 latency (s)", ".3g"),
    "n_errors": ("errors", "d"),
    "j_per_prompt_token": ("J/prompt token", ".3g"),
    "j_per_output_token": ("J/output token", ".3g"),
    "steady_j_per_output_token": ("J/output token (steady)", ".3g"),
    "steady_j_per_request": ("J/request (steady)", ".3g"),
    "steady_requests": ("steady requests", "d"),
    "energy_scope": ("scope", ""),
    "cpu_wh": ("CPU (Wh)", ".3g"),
    "gpu_wh": ("GPU (Wh)", ".3g"),
    "dram_wh": ("DRAM (Wh)", ".3g"),
    "idle_wh": ("idle (Wh)", ".3g"),
    "uncertainty_j": ("± (J)", ".3g"),
    "codecarbon_kwh": ("CodeCarbon (kWh)", ".3g"),
    "codecarbon_co2e_g": ("CodeCarbon CO2e (g)", ".3g"),
}
STUDY_COLUMNS = (
    "label",
    "topology",
    "n_splits",
    "texts_per_split",
    "accuracy",
    "energy_wh",
    "j_per_request",
    "duration_s",
    "avg_power_w",
    "devices",
    "energy_source",
    "energy_scope",
    "accuracy_per_wh",
)
# every table with an energy figure names its source (an estimate reads as one) and, where the
# units table does not sit beside it, its scope
CARBON_COLUMNS = (
    "label",
    "macro_f1",
    "gain_pp",
    "wh_per_1k",
    "co2e_g",
    "energy_source",
    "trainable_parameters",
    "cegi",
    "cegi_note",
    "parameters",
    "cegi_all_parameters",
    "latency_p50_s",
    "n_errors",
)
UNITS_COLUMNS = (
    "label",
    "j_per_request",
    "j_per_prompt_token",
    "j_per_output_token",
    "steady_j_per_output_token",
    "steady_j_per_request",
    "steady_requests",
    "wh_per_1k",
    "energy_scope",
    "energy_source",
)
ENERGY_COLUMNS = (
    "label",
    "energy_wh",
    "cpu_wh",
    "gpu_wh",
    "dram_wh",
    "idle_wh",
    "uncertainty_j",
    "codecarbon_kwh",
    "codecarbon_co2e_g",
    "energy_scope",
    "energy_source",
)
