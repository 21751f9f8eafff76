"""Train the traditional models on a split and evaluate them in-process (no Serve).

``accuwatt evaluate`` is the quick baseline and the in-process reference that the Serve benchmark
compares against: same splits, same models, same texts, one process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from serve_app.classifiers import embedding
from serve_app.classifiers.traditional import (
    MODEL_IDS,
    ArtifactError,
    TrainedModel,
    check_classes,
    check_out_dir,
    featurize,
    fit,
    read_manifest,
    save,
)
from serve_app.data import Dataset, Split, split_identity

DEFAULT_EMBEDDING = "packaged:all-MiniLM-L6-v2"
PICKLED_LIBRARIES = ("scikit-learn", "xgboost")
"""The libraries whose objects ``model.joblib`` holds: an artifact pickled by another version of one is
trained again (scikit-learn does not support loading across versions)."""
log = logging.getLogger(__name__)


def _split_name(split: Split) -> str:
    return f"split {split.index} ({split.key})"


def fit_split(
    split: Split, model_ids: list[str] | tuple[str, ...] = MODEL_IDS, embedding_model: str = DEFAULT_EMBEDDING
) -> dict[str, TrainedModel]:
    """Train every model of ``model_ids`` on ``split.train``; embeddings are computed once. A training
    sample with fewer than two classes is refused (`UsageError` naming the split); a local encoder
    path is recorded absolute (:func:`embedding.canonical_name`)."""
    texts, labels = list(split.train.texts), list(split.train.labels)
    check_classes(labels, _split_name(split))
    shared = None
    if any(m.startswith("embedding-") for m in model_ids):
        embedding_model = embedding.canonical_name(embedding_model)
        shared = featurize(None, embedding_model, texts)
    return {
        m: fit(
            m,
            texts,
            labels,
            features=shared if m.startswith("embedding-") else None,
            embedding_model=embedding_model,
        )
        for m in model_ids
    }


def train_split(
    split: Split,
    model_ids: list[str] | tuple[str, ...],
    out_dir: Path,
    labels: tuple[str, ...],
    dataset_source: str,
    embedding_model: str = DEFAULT_EMBEDDING,
) -> dict[str, dict[str, Any]]:
    """Train and save ``model_ids`` under ``out_dir/<model_id>/``; return their manifests. Labels of
    ``labels`` the training sample lacks are logged (the models score them 0.0)."""
    check_out_dir(out_dir)  # before training: a file in the way is refused at once
    absent = sorted(set(labels) - set(split.train.labels))
    if absent:
        log.warning(
            "%s: the %d training texts have no example of label(s) %s; the models never predict them "
            "(score 0.0); a larger --n-train may include them",
            _split_name(split),
            len(split.train.labels),
            ", ".join(absent),
        )
    models = fit_split(split, model_ids, embedding_model)
    provenance = {
        "dataset": {"name": split.dataset, "source": dataset_source, "fingerprint": split.fingerprint},
        "split": split_identity(split),
        "train_rows": split.train.rows_digest(),
    }
    return {m: save(model, out_dir / m, labels, provenance) for m, model in models.items()}


def untrained(model_ids: list[str] | tuple[str, ...], out_dir: Path) -> list[str]:
    """The models of ``model_ids`` with no usable saved artifact under ``out_dir`` (none, or one whose
    manifest or model file cannot be read: see :func:`_readable`)."""
    return [m for m in model_ids if _readable(out_dir / m, m) is None]


def _readable(artifact_dir: Path, model_id: str) -> dict[str, Any] | None:
    """The artifact's manifest when the artifact is whole: a manifest that is a JSON object for
    ``model_id`` and a ``model.joblib`` that loads as that model; else None (logged). A torn or
    edited file (a copy cut short, a disk error) is never served or taken as trained: the replica
    would fail to start on it, or serve another model under this id."""
    try:
        manifest = read_manifest(artifact_dir)
    except ArtifactError:
        return None
    except (ValueError, OSError) as exc:  # not JSON, not UTF-8, unreadable
        log.warning("%s: the manifest cannot be read (%s); the model counts as untrained", artifact_dir, exc)
        return None
    if not isinstance(manifest, dict) or manifest.get("model_id") != model_id:
        log.warning(
            "%s: the manifest is not one of %s; the model counts as untrained", artifact_dir, model_id
        )
        return None
    try:
        model = joblib.load(artifact_dir / "model.joblib")
    except Exception as exc:  # a truncated or foreign pickle raises whatever its bytes lead to
        log.warning("%s: model.joblib does not load (%s); the model counts as untrained", artifact_dir, exc)
        return None
    if not isinstance(model, TrainedModel) or model.model_id != model_id:
        log.warning("%s: model.joblib is not %s; the model counts as untrained", artifact_dir, model_id)
        return None
    return manifest


def _pickled_library_versions() -> dict[str, str]:
    """The versions of `PICKLED_LIBRARIES` here, named as manifests record them (``versions()`` of
    the traditional module, without its import of sentence-transformers and torch)."""
    import sklearn
    import xgboost

    return {"scikit-learn": sklearn.__version__, "xgboost": xgboost.__version__}


def _stale(manifest: dict[str, Any], split: Split, labels: tuple[str, ...], embedding_model: str) -> bool:
    """Was this artifact trained on another split (or on other rows of it: ``train_rows``, which
    artifacts from before the split fix that keeps test texts out of the training sample lack), label
    set or encoder than asked for, or pickled by another scikit-learn or XGBoost than this one (which
    may load it with other results, or not at all)? The encoder is compared in the form artifacts
    record (``embedding_model`` as :func:`embedding.canonical_name`)."""
    encoder = embedding_model if str(manifest.get("model_id", "")).startswith("embedding-") else None
    recorded = manifest.get("versions")
    current = _pickled_library_versions()
    return (
        manifest.get("split") != split_identity(split)
        or manifest.get("train_rows") != split.train.rows_digest()
        or list(manifest.get("labels") or []) != list(labels)
        or manifest.get("embedding_model") != encoder
        or not isinstance(recorded, dict)
        or any(recorded.get(lib) != current[lib] for lib in PICKLED_LIBRARIES)
    )


def train_missing(
    split: Split,
    model_ids: Sequence[str],
    out_dir: Path,
    ds: Dataset,
    embedding_model: str = DEFAULT_EMBEDDING,
) -> list[str]:
    """Train and save the models of ``model_ids`` on ``split`` of ``ds`` that are not under ``out_dir``
    or were trained there on another split, label set, encoder or library version, or whose files do
    not load (they are replaced); returns those trained."""
    if any(m.startswith("embedding-") for m in model_ids):
        embedding_model = embedding.canonical_name(embedding_model)
    missing = []
    for m in model_ids:
        manifest = _readable(out_dir / m, m)
        if manifest is None or _stale(manifest, split, ds.labels, embedding_model):
            missing.append(m)
    if missing:
        train_split(split, missing, out_dir, ds.labels, ds.source, embedding_model)
    return missing


@dataclass(frozen=True)
class EvalRow:
    model_id: str
    split: int
    accuracy: float
    n_test: int
    n_train: int
    predict_s: float  # in-process prediction time for the whole test set (one call)


def evaluate_split(
    split: Split, model_ids: list[str] | tuple[str, ...] = MODEL_IDS, embedding_model: str = DEFAULT_EMBEDDING
) -> list[EvalRow]:
    """Train on ``split.train`` and score ``split.test``. Test texts whose label the training sample
    lacks count as wrong (no model can answer them); that is logged, naming the labels and how many
    test texts carry them, never left silent."""
    models = fit_split(split, model_ids, embedding_model)
    texts, gold = list(split.test.texts), list(split.test.labels)
    trained = set(split.train.labels)
    unseen = sorted(set(gold) - trained)
    if unseen:
        log.warning(
            "%s: %d of the %d test texts have label(s) %s that the %d training texts lack; no model can "
            "predict them, so they count as wrong; a larger --n-train may include them",
            _split_name(split),
            sum(g not in trained for g in gold),
            len(gold),
            ", ".join(unseen),
            len(split.train.labels),
        )
    rows = []
    for m, model in models.items():
        t0 = time.perf_counter()
        proba = model.predict_proba(texts)
        dt = time.perf_counter() - t0
        pred = [model.classes[int(i)] for i in proba.argmax(axis=1)]
        acc = sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold)
        rows.append(EvalRow(m, split.index, acc, len(gold), len(split.train.rows), dt))
    return rows


def summarize(rows: list[EvalRow]) -> list[dict[str, Any]]:
    """Mean and standard deviation of accuracy per model over splits."""
    import numpy as np

    out = []
    for m in dict.fromkeys(r.model_id for r in rows):
        accs = np.array([r.accuracy for r in rows if r.model_id == m])
        times = np.array([r.predict_s for r in rows if r.model_id == m])
        out.append(
            {
                "model": m,
                "splits": len(accs),
                "accuracy_mean": float(accs.mean()),
                "accuracy_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                "predict_s_mean": float(times.mean()),
            }
        )
    return out
