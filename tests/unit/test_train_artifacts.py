"""Training saves loadable artifacts with a manifest that names data, split and library versions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from serve_app.classifiers.traditional import ArtifactError, TraditionalClassifier
from serve_app.cli import main
from serve_app.data import load_dataset, make_split, split_identity
from serve_app.train import evaluate_split, train_missing, train_split


def test_train_save_load_predict(tmp_path: Path) -> None:
    ds = load_dataset("demo")
    split = make_split(ds, 150, 50, seed=3, index=1)
    manifests = train_split(split, ["bow-logreg", "tfidf-xgboost"], tmp_path, ds.labels, ds.source)
    for model_id in ("bow-logreg", "tfidf-xgboost"):
        m = manifests[model_id]
        assert (
            m["labels"] == ["OFFENSE", "OTHER"] and m["split"]["index"] == 1 and m["split"]["n_train"] == 150
        )
        assert m["dataset"]["fingerprint"] == ds.fingerprint and "scikit-learn" in m["versions"]
        clf = TraditionalClassifier(tmp_path / model_id)
        preds = clf.compute(list(split.test.texts))
        assert {p.label for p in preds} <= set(ds.labels)
        assert all(abs(sum(p.scores.values()) - 1) < 1e-5 for p in preds if p.scores)


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="accuwatt train"):
        TraditionalClassifier(tmp_path / "tfidf-logreg")


def test_evaluate_beats_chance_on_rotten_tomatoes_tfidf() -> None:
    from tests.conftest import SHARED_DATASETS

    ds = load_dataset(str(SHARED_DATASETS / "rotten_tomatoes"))
    rows = evaluate_split(make_split(ds, 400, 200, 1, 0), ["bow-logreg", "tfidf-logreg"])
    assert all(0.55 < r.accuracy <= 1 for r in rows)


def test_cli_evaluate_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "demo",
                "--n-train",
                "100",
                "--n-test",
                "50",
                "--splits",
                "2",
                "--models",
                "bow-logreg",
                "tfidf-logreg",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [s["model"] for s in out["summary"]] == ["bow-logreg", "tfidf-logreg"]
    assert all(s["splits"] == 2 for s in out["summary"])


def test_artifacts_of_another_split_or_label_set_are_retrained(tmp_path: Path) -> None:
    ds = load_dataset("demo")
    split = make_split(ds, 60, 20, seed=3, index=0)
    assert train_missing(split, ["tfidf-logreg"], tmp_path, ds) == ["tfidf-logreg"]
    assert train_missing(split, ["tfidf-logreg"], tmp_path, ds) == []  # same split, labels: kept
    other = make_split(ds, 60, 20, seed=3, index=1)
    assert train_missing(other, ["tfidf-logreg"], tmp_path, ds) == ["tfidf-logreg"]
    manifest = json.loads((tmp_path / "tfidf-logreg" / "manifest.json").read_text())
    assert manifest["split"]["index"] == 1
    # the same folder asked for another label set (the same file read with another label column)
    relabel = tmp_path / "relabel.jsonl"
    relabel.write_text(
        "\n".join(json.dumps({"text": t, "label": "ab"[i % 2]}) for i, t in enumerate(ds.train.texts))  # type: ignore[union-attr]
    )
    ds2 = load_dataset(str(relabel))
    split2 = make_split(ds2, 60, 20, seed=3, index=1)
    assert train_missing(split2, ["tfidf-logreg"], tmp_path, ds2) == ["tfidf-logreg"]
    assert TraditionalClassifier(tmp_path / "tfidf-logreg").info.labels == ("a", "b")


def test_artifacts_trained_on_other_rows_of_the_same_split_are_retrained(tmp_path: Path) -> None:
    """An artifact from before the fix that keeps a split's test texts out of its training sample
    names the same split (dataset, seed, index, sizes) as now, drawn as other rows: it is retrained,
    and so is one whose manifest has no record of its rows (written before they were recorded)."""
    ds = load_dataset("demo")
    split = make_split(ds, 60, 20, seed=3, index=0)
    pool_rows = make_split(ds, 60, 20, seed=3, index=1).train
    earlier = dataclasses.replace(split, train=pool_rows)  # the same identity, other training texts
    train_split(earlier, ["tfidf-logreg"], tmp_path, ds.labels, ds.source)
    path = tmp_path / "tfidf-logreg" / "manifest.json"
    assert json.loads(path.read_text())["split"] == split_identity(split)
    assert train_missing(split, ["tfidf-logreg"], tmp_path, ds) == ["tfidf-logreg"]
    assert train_missing(split, ["tfidf-logreg"], tmp_path, ds) == []
    manifest = json.loads(path.read_text())
    assert manifest["train_rows"] == split.train.rows_digest() != pool_rows.rows_digest()
    del manifest["train_rows"]
    path.write_text(json.dumps(manifest))
    assert train_missing(split, ["tfidf-logreg"], tmp_path, ds) == ["tfidf-logreg"]
