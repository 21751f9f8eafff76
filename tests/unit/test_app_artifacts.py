"""The app builder's artifacts: ``train_if_missing`` trains what its dataset and split ask for, as
replay and sweep do, and leaves artifacts that already match."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.app import ensure_artifacts
from serve_app.classifiers.traditional import ArtifactError, read_manifest
from serve_app.config import AppConfig
from tests.conftest import SHARED_DATASETS

pytestmark = pytest.mark.unit


def config(root: Path, train: dict[str, object] | None) -> AppConfig:
    return AppConfig.model_validate(
        {
            "classifiers": [{"kind": "traditional", "id": "tfidf-logreg"}],
            "artifacts_dir": str(root),
            "train_if_missing": train,
        }
    )


def test_an_artifact_of_another_dataset_is_trained_again(tmp_path: Path) -> None:
    emotion = SHARED_DATASETS / "emotion"
    if not emotion.exists():
        pytest.skip("shared emotion dataset missing")
    ensure_artifacts(config(tmp_path, {"dataset": "demo", "n_train": 60, "n_test": 10}))
    assert read_manifest(tmp_path / "tfidf-logreg")["labels"] == ["OFFENSE", "OTHER"]

    # the same config again: the artifact matches and stays as it was
    before = (tmp_path / "tfidf-logreg" / "model.joblib").stat().st_mtime_ns
    ensure_artifacts(config(tmp_path, {"dataset": "demo", "n_train": 60, "n_test": 10}))
    assert (tmp_path / "tfidf-logreg" / "model.joblib").stat().st_mtime_ns == before

    # another dataset: the demo's artifact is not served for it
    ensure_artifacts(config(tmp_path, {"dataset": str(emotion), "n_train": 60, "n_test": 10}))
    labels = read_manifest(tmp_path / "tfidf-logreg")["labels"]
    assert "joy" in labels and "OFFENSE" not in labels


def test_without_train_if_missing_an_untrained_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not trained"):
        ensure_artifacts(config(tmp_path, None))
