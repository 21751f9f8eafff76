"""The study's traditional classifiers: {bag of words, char 2-3-gram TF-IDF, sentence embedding} x
{logistic regression, XGBoost}, library defaults, trained on a split's training texts.

An artifact is a folder ``<artifacts_dir>/<model_id>/`` with ``model.joblib`` (features + estimator;
the embedding encoder itself is not pickled, only named) and ``manifest.json``.
"""

from __future__ import annotations

import asyncio
import json
import platform
import unicodedata
from collections.abc import Sequence
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
from serve_app.errors import UsageError
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


def normalise(texts: Sequence[str]) -> list[str]:
    """Texts in Unicode normal form NFC: the same word gives the same features whether it arrives
    composed (``ü``) or decomposed (``u`` + combining diaeresis, which ``\\w`` does not match)."""
    return [unicodedata.normalize("NFC", t) for t in texts]


def featurize(vectorizer: Any, embedding_model: str | None, texts: Sequence[str], fit: bool = False) -> Any:
    """The one place features are computed, for training (``fit``: the vectorizer learns its
    vocabulary) and for serving: texts NFC-normalised, then the vectorizer or the encoder."""
    texts = normalise(texts)
    if vectorizer is None:
        assert embedding_model is not None
        return embedding.encode(embedding_model, texts)
    if not fit:
        return vectorizer.transform(texts)
    try:
        return vectorizer.fit_transform(texts)
    except ValueError as exc:
        if "empty vocabulary" not in str(exc):
            raise
        if getattr(vectorizer, "analyzer", None) == "char":  # tfidf: character 2-3-grams
            raise UsageError(
                "no training text has two or more characters (one emoji or letter each?): character "
                "n-grams have nothing to count; use the embedding models"
            ) from None
        raise UsageError(
            "no word tokens in the training texts (only emoji, punctuation or one-letter words?): "
            "bag of words has nothing to count; use the tfidf or embedding models"
        ) from None


def check_classes(labels: Sequence[str], where: str = "the training sample") -> None:
    """Refuse a training sample with fewer than two classes: a classifier cannot be fitted (logistic
    regression) or fits one that predicts a single class and whose scores are unusable (XGBoost)."""
    seen = sorted(set(labels))
    if len(seen) < 2:
        raise UsageError(
            f"{where}: the {len(labels)} training texts have {len(seen)} class(es) {seen}, a classifier "
            "needs at least 2; use a larger --n-train (or a dataset with more texts of the other labels)"
        )


def padded_predictions(labels: Sequence[str], classes: Sequence[str], proba: Any) -> list[Prediction]:
    """Predictions scored over every label the model advertises (``labels``, in that order): a label
    the training sample lacked scores 0.0 (the estimator knows only ``classes``, its columns)."""
    order = list(labels) + [c for c in classes if c not in labels]
    if list(classes) == order:
        return predictions_from_proba(order, proba)
    proba = np.asarray(proba)
    full = np.zeros((len(proba), len(order)))
    full[:, [order.index(c) for c in classes]] = proba
    return predictions_from_proba(order, full)


@dataclass
class TrainedModel:
    """Features + estimator. ``classes`` are the label strings the estimator knows, in its order."""

    model_id: str
    vectorizer: Any
    estimator: Any
    classes: tuple[str, ...]
    embedding_model: str | None

    def features(self, texts: list[str]) -> Any:
        return featurize(self.vectorizer, self.embedding_model, texts)

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
    """Train one model. ``features`` may be precomputed with :func:`featurize` (embeddings shared by
    two models). A sample with fewer than two classes, or (bag of words) no word token, is refused
    (`UsageError`)."""
    check_classes(labels)
    feature, est_name = model_id.split("-", 1)
    vec = make_vectorizer(feature)
    classes = tuple(sorted(set(labels)))  # only labels seen in training (XGBoost needs 0..k-1)
    y = np.array([classes.index(lab) for lab in labels])
    encoder = None if vec is not None else embedding.canonical_name(embedding_model or "")
    x = features if vec is None and features is not None else featurize(vec, encoder, texts, fit=True)
    est = make_estimator(est_name)
    est.fit(x, y)
    return TrainedModel(model_id, vec, est, classes, encoder)


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


def check_out_dir(out_dir: Path) -> None:
    """Refuse (`UsageError`) an artifact folder that cannot be made: it, or a folder above it, is a file."""
    for p in (out_dir, *out_dir.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise UsageError(
                    f"--out {out_dir}: {p} is a file, not a folder; name a folder for the models"
                )
            return


def save(
    model: TrainedModel, out_dir: Path, labels: tuple[str, ...], provenance: dict[str, Any]
) -> dict[str, Any]:
    check_out_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no permission, a file made meanwhile
        raise UsageError(f"--out {out_dir}: cannot make the folder ({exc.strerror or exc})") from None
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
    # A save that fails (disk full, an error while pickling) must not leave a truncated model beside
    # the previous manifest (that artifact would look complete and fail to load): the model is written
    # to a temporary file first; the old manifest goes before the new model replaces the old one, and
    # the new manifest is put in place whole.
    model_tmp = out_dir / "model.joblib.tmp"
    try:
        joblib.dump(model, model_tmp)
    except BaseException:
        model_tmp.unlink(missing_ok=True)
        raise
    (out_dir / MANIFEST).unlink(missing_ok=True)
    model_tmp.replace(out_dir / "model.joblib")
    manifest_tmp = out_dir / (MANIFEST + ".tmp")
    manifest_tmp.write_text(json.dumps(manifest, indent=2))
    manifest_tmp.replace(out_dir / MANIFEST)
    return manifest


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = artifact_dir / MANIFEST
    if not path.exists() or not (artifact_dir / "model.joblib").exists():
        raise ArtifactError(f"no trained model at {artifact_dir} (run `accuwatt train`)")
    return json.loads(path.read_text())


def trainable_parameters(manifest: dict[str, Any], model: TrainedModel) -> int:
    """What training fitted, as the manifest records it (older manifests lack it: counted then)."""
    value = manifest.get("trainable_parameters")
    return int(value) if isinstance(value, int) else model.trainable_parameters()


def artifact_details(manifest: dict[str, Any], model: TrainedModel) -> dict[str, Any]:
    """What ``/v1/models`` shows of an artifact: data, split, encoder, versions and the classes the
    estimator was trained on (``labels`` may hold more; those score 0.0)."""
    details = {k: manifest.get(k) for k in ("dataset", "split", "embedding_model", "versions")}
    details["trained_classes"] = list(model.classes)
    return details


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
                trainable_parameters=trainable_parameters(self.manifest, self.model),
                details=artifact_details(self.manifest, self.model),
            )
        )

    def compute(self, texts: list[str]) -> list[Prediction]:
        """The model call itself, in the calling thread (``predict`` runs it in a worker thread);
        scores cover every label of ``info.labels``. No texts, no predictions: the estimators refuse
        a matrix of no rows."""
        if not texts:
            return []
        return padded_predictions(self.info.labels, self.model.classes, self.model.predict_proba(texts))

    async def predict(
        self, texts: list[str], mode: str | None = None, on_work: WorkSink | None = None
    ) -> list[Prediction]:
        """``mode`` does not apply (one way to classify); the replica's event loop stays free."""
        return await asyncio.to_thread(self.compute, texts)
