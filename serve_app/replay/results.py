"""The results folder: where a run lives, how to find runs, and their metrics.

Layout (one run folder per model; a sweep fills the tree)::

    <out>/<dataset>/<topology>/<model>/<run>/
        run.json        config echo, versions, git commit, machine, topology, splits, sessions
        records.jsonl   one line per request (serve_app.replay.records.Record)
        records.failed.jsonl  failed records that ``--retry-failed`` moved aside (read by no report)
        windows.jsonl   one line per replay window: /v1/energy delta, optional CodeCarbon figures
        metrics.json    per-split metrics and their mean (recomputed from records by `accuwatt report`)

``<topology>`` names where the model ran (``cpu``, ``1gpu``, ``4gpu-2nodes``, or ``--topology``);
``<run>`` is derived from everything that defines the requests (protocol, load shape, batch size),
so rerunning a command resumes its run folder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from serve_app.replay.records import Record, read_records, read_windows
from serve_app.replay.summary import RunMetrics, average_over_splits, split_metrics
from serve_app.wire import ModelEntry, RunInfo, WindowRecord

RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
WINDOWS_FILE = "windows.jsonl"
METRICS_FILE = "metrics.json"


def safe_name(s: str) -> str:
    """A folder-safe version of a dataset, model or topology name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "unnamed"


def run_dir(out: Path, dataset: str, topology: str, model: str, run: str) -> Path:
    return out / safe_name(dataset) / safe_name(topology) / safe_name(model) / safe_name(run)


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Every run folder (holding ``run.json`` and ``records.jsonl``) at or below ``paths``."""
    found: set[Path] = set()
    for p in paths:
        if (p / RUN_FILE).is_file() and (p / RECORDS_FILE).is_file():
            found.add(p)
        elif p.is_dir():
            found.update(f.parent for f in p.rglob(RUN_FILE) if (f.parent / RECORDS_FILE).is_file())
    return sorted(found)


@dataclass(frozen=True)
class RunData:
    path: Path
    info: RunInfo
    records: list[Record]
    windows: list[WindowRecord]

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def model_entry(self) -> ModelEntry | None:
        """The model's ``/v1/models`` row when the run began (``run.json``: ``topology.model``)."""
        return self.info.topology.model


def load_run(path: Path) -> RunData:
    info = RunInfo.model_validate_json((path / RUN_FILE).read_text())
    return RunData(path, info, read_records(path / RECORDS_FILE), read_windows(path / WINDOWS_FILE))


def record_problem(run: RunData) -> str | None:
    """Why the run's records cannot be summed as one run of its model, or None (checked by reports;
    a replay writes none of these):

    - a record of another model than ``run.json`` names (its split's metrics would mix two models);
    - a request recorded more than once (two replays of the folder at once, before the folder lock, or
      two records files joined): its texts and energy would count twice;
    - a request with no text, or an answer with another number of labels than texts: accuracy and
      macro-F1 pair each text with its answer."""
    others = sorted({r.model for r in run.records} - {run.info.model})
    if others:
        return (
            f"{RECORDS_FILE} holds records of model(s) {', '.join(map(repr, others))}; "
            f"{RUN_FILE} names {run.info.model!r}"
        )
    counts = Counter(r.key for r in run.records)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if repeated:
        _, split, index = repeated[0]
        return (
            f"{RECORDS_FILE} records {len(repeated)} request(s) more than once (e.g. split {split!r} "
            f"request {index}, {counts[repeated[0]]} times): their texts and energy would count twice; "
            "keep one line per request, or replay into a new folder"
        )
    for r in run.records:
        if not r.gold:
            return f"{RECORDS_FILE}: split {r.split!r} request {r.request_index} has no text"
        if r.ok and r.predicted is not None and len(r.predicted) != len(r.gold):
            return (
                f"{RECORDS_FILE}: split {r.split!r} request {r.request_index} answers "
                f"{len(r.predicted)} labels for {len(r.gold)} texts"
            )
    return None


def run_metrics(run: RunData) -> tuple[list[RunMetrics], RunMetrics | None]:
    """Per-split metrics of a run (splits in run order) and their mean; ``None`` mean if no records."""
    splits_meta = run.info.splits
    carbon = run.info.carbon.g_per_kwh
    entry = run.model_entry
    parameters = entry.parameters if entry is not None else None
    trainable = entry.trainable_parameters if entry is not None else None
    if trainable is None and entry is not None and entry.kind == "llm":
        trainable = 0  # recorded before /v1/models reported it: zero-shot LLMs have none
    by_split: dict[str, list[Record]] = {}
    for r in run.records:
        by_split.setdefault(r.split, []).append(r)
    order = [s for s in splits_meta if s in by_split] + sorted(s for s in by_split if s not in splits_meta)
    planned = {s: splits_meta[s].n_test if s in splits_meta else None for s in [*splits_meta, *by_split]}
    per_split = [
        split_metrics(
            by_split[s],
            [w for w in run.windows if w.split == s],
            majority_label=splits_meta[s].majority_label if s in splits_meta else None,
            parameters=parameters,
            carbon_g_per_kwh=carbon,
            trainable_parameters=trainable,
        ).model_copy(update={"n_texts_planned": planned[s]})
        for s in order
    ]
    if not per_split:
        return per_split, None
    # the run's plan counts the splits it lists but never reached (a killed run) too
    total = None if None in planned.values() else sum(v for v in planned.values() if v is not None)
    return per_split, average_over_splits(per_split).model_copy(update={"n_texts_planned": total})


def write_metrics(run: RunData) -> Path:
    per_split, mean = run_metrics(run)
    out = run.path / METRICS_FILE
    out.write_text(
        json.dumps(
            {
                "mean": None if mean is None else mean.model_dump(mode="json"),
                "splits": [m.model_dump(mode="json") for m in per_split],
            },
            indent=2,
        )
    )
    return out
