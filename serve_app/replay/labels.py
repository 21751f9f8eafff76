"""Does a model answer with the dataset's labels? Checked before a replay sends its first request.

A model whose labels share nothing with the dataset's can only score 0 (e.g. a sentiment dataset
against the OFFENSE/OTHER demo models): the replay refuses, naming both label sets. A partial overlap
(labels the model never answers, or answers the dataset never expects) is allowed with a warning. The
comparison is recorded in each model's ``run.json`` (``label_check``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from serve_app.errors import UsageError
from serve_app.wire import ModelEntry, ModelList

log = logging.getLogger("accuwatt.replay")


class LabelMismatchError(UsageError):
    """A model shares no label with the dataset."""


def compare_labels(dataset_labels: Sequence[str], entry: ModelEntry | None) -> dict[str, Any]:
    """The dataset's labels against a ``/v1/models`` row's: ``status`` is ``match``, ``partial``,
    ``none`` (no shared label) or ``unknown`` (the model did not say its labels)."""
    model_labels = list(entry.labels) if entry is not None else []
    ds = [str(x) for x in dataset_labels]
    shared = [x for x in ds if x in model_labels]
    if not model_labels:
        status = "unknown"
    elif not shared:
        status = "none"
    elif set(ds) == set(model_labels):
        status = "match"
    else:
        status = "partial"
    return {
        "status": status,
        "dataset_labels": ds,
        "model_labels": model_labels,
        "shared": shared,
        "dataset_only": [x for x in ds if x not in model_labels],
        "model_only": [x for x in model_labels if x not in ds],
    }


def check_labels(
    dataset: str, dataset_labels: Sequence[str], listing: ModelList | None, models: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Compare every model's labels with the dataset's; raise `LabelMismatchError` if any model shares
    none (before anything is sent), warn for a partial overlap. Returns the comparison per model."""
    out = {m: compare_labels(dataset_labels, listing.entry(m) if listing else None) for m in models}
    for model, c in out.items():
        if c["status"] == "none":
            raise LabelMismatchError(
                f"model {model!r} answers with labels {c['model_labels']}, dataset {dataset!r} has "
                f"{c['dataset_labels']}: no label in common, every answer would be wrong"
            )
    for model, c in out.items():
        if c["status"] == "partial":
            log.warning(
                "model %r and dataset %r share only %s (dataset only: %s, model only: %s)",
                model,
                dataset,
                c["shared"],
                c["dataset_only"],
                c["model_only"],
            )
        elif c["status"] == "unknown":
            log.warning("model %r did not list its labels; the dataset's were not checked", model)
    return out
