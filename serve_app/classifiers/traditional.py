"""The study's traditional classifiers: {bag of words, char 2-3-gram TF-IDF, sentence embedding} x
{logistic regression, XGBoost}, library defaults, trained on a split's training texts.

An artifact is a folder ``<artifacts_dir>/<model_id>/`` with ``model.joblib`` (features + estimator;
the embedding encoder itself is not pickled, only named) and ``manifest.json``.
"""

from __future__ import annotations

import asyncio
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from xgboost import XGBClassifier

from serve_app.classifiers import embedding
from serve_app.classifiers.base import (
    Classifier,
    ClassifierInfo,
    WorkSink,
    predictions_from_proba,
)
from serve_app.wire import Prediction

FEATURES = ("bow", "tfidf", "embedding")
ESTIMATORS = ("logreg", "xgboost")
MODEL_IDS = tuple(f"{f}-{e}" for f in FEATURES for e in ESTIMATORS)
MANIFEST = "manifest.json"


class ArtifactError(FileNotFoundError):
    """A model artifact is missing or does not match what the config asks for."""


def make_vectorizer(feature: str) -> Any:
    if feature == "bow":
        return CountVectorizer()
    if feature == "tfidf":
        return TfidfVectorizer(analyzer="char", ngram_range=(2, 3))
    return None  # embeddings are computed by the encoder


def make_estimator(name: str) -> Any:
    return LogisticRegression() if name == "logreg" else XGBClassifier()


@dataclass
class TrainedModel:
    """Features + estimator. ``classes`` are the label strings the estimator knows, in its order."""

    model_id: str
    vectorizer: Any
    estimator: Any
    classes: tuple[str, ...]
    embedding_model: str | None

    def features(self, texts: list[str]) -> Any:
        if self.vectorizer is not None:
            return self.vectorizer.transform(texts)
        assert self.embedding_model is not None
        return embedding.encode(self.embedding_model, texts)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(self.features(texts)))

    def trainable_parameters(self) -> int:
        """What training fitted: the head's linear weights and intercepts, or XGBoost's tree nodes
        (the size the paper's CEGI normalises by; a frozen encoder is not trained)."""
        if hasattr(self.estimator, "coef_"):
            return int(self.estimator.coef_.size + self.estimator.intercept_.size)
        return int(self.estimator.get_booster().trees_to_dataframe().shape[0])

    def parameters(self) -> int:
        """All parameters the model uses: the trainable head plus a frozen encoder's."""
        enc = embedding.encoder_parameters(self.embedding_model) if self.embedding_model else 0
        return self.trainable_parameters() + enc


def fit(
    model_id: str,
    texts: list[str],
    labels: list[str],
    features: Any | None = None,
    embedding_model: str | None = None,
) -> TrainedModel:
    """Train one model. ``features`` may be precomputed (embeddings shared by two models)."""
    feature, est_name = model_id.split("-", 1)
    vec = make_vectorizer(feature)
    classes = tuple(sorted(set(labels)))  # only labels seen in training (XGBoost needs 0..k-1)
    y = np.array([classes.index(lab) for lab in labels])
    if vec is not None:
        x = vec.fit_transform(texts)
    else:
        x = features if features is not None else embedding.encode(embedding_model or "", texts)
    est = make_estimator(est_name)
    est.fit(x, y)
    return TrainedModel(model_id, vec, est, classes, embedding_model if vec is None else None)


def versions() -> dict[str, str]:
    import sklearn
    import xgboost

    out = {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "xgboost": xgboost.__version__,
    }
    try:
        import sentence_transformers

        out["sentence-transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return out


def save(
    model: TrainedModel, out_dir: Path, labels: tuple[str, ...], provenance: dict[str, Any]
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out_dir / "model.joblib")
    manifest = {
        "model_id": model.model_id,
        "labels": list(labels),
        "trained_classes": list(model.classes),
        "embedding_model": model.embedding_model,
        "parameters": model.parameters(),
        "trainable_parameters": model.trainable_parameters(),
        "versions": versions(),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **provenance,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = artifact_dir / MANIFEST
    if not path.exists() or not (artifact_dir / "model.joblib").exists():
        raise ArtifactError(f"no trained model at {artifact_dir} (run `accuwatt train`)")
    return json.loads(path.read_text())


class TraditionalClassifier(Classifier):
    """A loaded artifact: one synchronous model call per batch (the server batches requests)."""

    batched = True

    def __init__(self, artifact_dir: Path) -> None:
        self.manifest = read_manifest(artifact_dir)
        self.model: TrainedModel = joblib.load(artifact_dir / "model.joblib")
        devices = ("cpu",)
        if self.model.embedding_model:
            enc = embedding.load_encoder(self.model.embedding_model)  # load now, not on the first request
            devices = (str(enc.device),)
        super().__init__(
            ClassifierInfo(
                model_id=self.manifest["model_id"],
                kind="traditional",
                labels=tuple(self.manifest["labels"]),
                devices=devices,
                parameters=self.manifest.get("parameters"),
                trainable_parameters=self.model.trainable_parameters(),  # older manifests lack it
                details={
                    k: self.manifest.get(k) for k in ("dataset", "split", "embedding_model", "versions")
                },
            )
        )

    def compute(self, texts: list[str]) -> list[Prediction]:
        """The model call itself, in the calling thread (``predict`` runs it in a worker thread)."""
        return predictions_from_proba(self.model.classes, self.model.predict_proba(texts))

    async def predict(
        self, texts: list[str], mode: str | None = None, on_work: WorkSink | None = None
    ) -> list[Prediction]:
        """``mode`` does not apply (one way to classify); the replica's event loop stays free."""
        return await asyncio.to_thread(self.compute, texts)
