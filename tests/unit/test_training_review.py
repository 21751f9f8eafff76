"""Review mends of training and serving the traditional models: samples that cannot train are refused
in one line, an encoder path is recorded absolute, untrained labels score 0.0, features do not depend
on the Unicode normal form, and the LLM model cache is written safely and outside site-packages."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from serve_app.classifiers import embedding
from serve_app.classifiers.traditional import TraditionalClassifier, fit
from serve_app.cli import main
from serve_app.data import load_dataset, make_split
from serve_app.errors import UsageError
from serve_app.models_prepare import READY_MARKER, default_cache_dir
from serve_app.train import train_missing, train_split
from tests.conftest import REPO, SHARED_DATASETS

pytestmark = pytest.mark.unit


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    return path


def _train(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["train", "--n-test", "10", *args])
    return rc, capsys.readouterr().err


@pytest.fixture
def skewed(tmp_path: Path) -> Path:
    """60 texts of label a, 3 of label b: a small training sample often holds only a."""
    rows = [(f"text number {i} about apples", "a") for i in range(60)]
    rows += [(f"text number {i} about bananas", "b") for i in range(3)]
    return _jsonl(tmp_path / "skewed.jsonl", rows)


def _one_class_seed(path: Path, n_train: int) -> int:
    ds = load_dataset(str(path))
    return next(s for s in range(1000) if len(set(make_split(ds, n_train, 10, s, 0).train.labels)) == 1)


@pytest.mark.parametrize("model", ["bow-logreg", "bow-xgboost", "tfidf-xgboost"])
def test_a_one_class_training_sample_is_refused_naming_the_split(
    model: str, skewed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """logreg raised a ValueError traceback; XGBoost saved a model whose every prediction crashed."""
    seed = _one_class_seed(skewed, 4)
    out = tmp_path / "art"
    args = ["--dataset", str(skewed), "--n-train", "4", "--seed", str(seed), "--models", model]
    rc, err = _train([*args, "--out", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("accuwatt: error: split 0 (seed")
    assert "1 class(es) ['a']" in err and "--n-train" in err
    assert not (out / model).exists()
    with pytest.raises(UsageError, match="at least 2"):
        fit(model, ["x y", "y z"], ["a", "a"])


def test_training_texts_without_word_tokens_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # distinct texts (each repeated k times): a text that is also a test text is never trained on
    rows = [
        (t * k, lab)
        for k in range(1, 11)
        for t, lab in (("\U0001f44e \U0001f620 ", "neg"), ("\U0001f44d \U0001f642 ", "pos"), ("a ! ", "pos"))
    ]
    data = _jsonl(tmp_path / "emoji.jsonl", rows)
    args = ["--dataset", str(data), "--n-train", "10", "--models", "bow-logreg", "--out", str(tmp_path / "o")]
    rc, err = _train(args, capsys)
    assert rc == 2 and err.count("\n") == 1 and "no word tokens in the training texts" in err
    # character n-grams do see the emoji: tfidf trains on the same texts
    rc, _ = _train([*args[:-3], "tfidf-logreg", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0


@pytest.mark.parametrize("name", ["./no-such-encoder", "no-such-org/no-such-encoder"])
def test_a_missing_embedding_model_is_one_line_naming_it(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--n-train", "20", "--models", "embedding-logreg", "--embedding-model", name]
    rc, err = _train([*args, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"--embedding-model {name}:" in err


def test_out_that_is_a_file_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    rc, err = _train(["--n-train", "20", "--models", "bow-logreg", "--out", str(afile)], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"--out {afile}" in err and "is a file" in err
    assert afile.read_text() == "not a folder\n"


def test_a_relative_embedding_path_is_recorded_absolute_and_loads_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = Path(embedding.resolve_embedding_model("packaged:all-MiniLM-L6-v2"))
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "mini").symlink_to(packaged, target_is_directory=True)
    ds = load_dataset("demo")
    split = make_split(ds, 40, 10, seed=3, index=0)
    art = tmp_path / "art"
    monkeypatch.chdir(work)
    manifests = train_split(split, ["embedding-logreg"], art, ds.labels, ds.source, "./mini")
    recorded = manifests["embedding-logreg"]["embedding_model"]
    assert recorded == str(packaged.resolve()) and Path(recorded).is_absolute()
    # the same relative name from the same folder, or the absolute one, is the same encoder: not stale
    assert train_missing(split, ["embedding-logreg"], art, ds, "./mini") == []
    assert train_missing(split, ["embedding-logreg"], art, ds, recorded) == []
    monkeypatch.chdir(elsewhere)  # "./mini" means nothing here; the artifact still loads
    clf = TraditionalClassifier(art / "embedding-logreg")
    assert {p.label for p in clf.compute(list(split.test.texts))} <= set(ds.labels)


def _sample_missing_a_label(n_train: int) -> tuple[object, object]:
    ds = load_dataset(str(SHARED_DATASETS / "emotion"))
    for seed in range(1000):
        split = make_split(ds, n_train, 20, seed, 0)
        seen = set(split.train.labels)
        if 2 <= len(seen) < len(ds.labels):
            return ds, split
    raise AssertionError("no such seed")


@pytest.mark.parametrize("model", ["bow-logreg", "tfidf-xgboost"])
def test_labels_missing_from_training_score_zero_in_label_order(
    model: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from serve_app.classifiers.traditional import trainable_parameters

    ds, split = _sample_missing_a_label(12)
    absent = sorted(set(ds.labels) - set(split.train.labels))  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="serve_app.train"):
        manifests = train_split(split, [model], tmp_path, ds.labels, ds.source)  # type: ignore[arg-type]
    assert any(all(lab in r.getMessage() for lab in absent) for r in caplog.records)
    clf = TraditionalClassifier(tmp_path / model)
    assert clf.info.labels == ds.labels  # type: ignore[attr-defined]
    assert clf.info.details["trained_classes"] == sorted(set(split.train.labels))  # type: ignore[attr-defined]
    texts = list(split.test.texts)  # type: ignore[attr-defined]
    proba = clf.model.predict_proba(texts)
    for pred, row in zip(clf.compute(texts), proba, strict=True):
        assert list(pred.scores) == list(clf.info.labels)
        assert all(pred.scores[lab] == 0.0 for lab in absent)
        assert [pred.scores[c] for c in clf.model.classes] == pytest.approx(row.tolist())
        assert sum(pred.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert pred.label == clf.model.classes[int(row.argmax())]
    # one count of trainable parameters for the in-replica and the pipeline classifier
    assert clf.info.trainable_parameters == manifests[model]["trainable_parameters"]
    assert trainable_parameters(manifests[model], clf.model) == clf.model.trainable_parameters()
    older = {k: v for k, v in manifests[model].items() if k != "trainable_parameters"}
    assert trainable_parameters(older, clf.model) == clf.model.trainable_parameters()


def test_padded_predictions_orders_scores_as_the_labels() -> None:
    from serve_app.classifiers.traditional import padded_predictions

    preds = padded_predictions(("c", "a", "b"), ("a", "b"), np.array([[0.25, 0.75]]))
    assert list(preds[0].scores.items()) == [("c", 0.0), ("a", 0.25), ("b", 0.75)] and preds[0].label == "b"


@pytest.mark.parametrize("model", ["bow-logreg", "tfidf-logreg"])
def test_features_do_not_depend_on_the_unicode_normal_form(model: str) -> None:
    ds = load_dataset(str(SHARED_DATASETS / "germeval2018"))
    split = make_split(ds, 200, 50, seed=1, index=0)
    trained = fit(
        model, [unicodedata.normalize("NFD", t) for t in split.train.texts], list(split.train.labels)
    )
    texts = [t for t in split.test.texts if unicodedata.normalize("NFD", t) != t]
    assert texts, "no text with a composed character"
    nfc = trained.predict_proba([unicodedata.normalize("NFC", t) for t in texts])
    nfd = trained.predict_proba([unicodedata.normalize("NFD", t) for t in texts])
    assert np.array_equal(nfc, nfd)
    if model == "bow-logreg":  # words with umlauts are words, not split at the combining mark
        assert any(ch in w for w in trained.vectorizer.vocabulary_ for ch in "äöü")


def _write_model(tmp: Path) -> None:
    (tmp / "config.json").write_text("{}\n")


def test_publish_replaces_a_file_at_the_target(tmp_path: Path) -> None:
    from serve_app.models_prepare import _build

    out = tmp_path / "tiny-llama"
    out.write_text("left over\n")
    assert _build(out, _write_model) == out
    assert out.is_dir() and (out / READY_MARKER).exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]


def test_make_tiny_llama_over_a_file_at_its_folder(tmp_path: Path) -> None:
    """A file where the model folder goes crashed the publish (NotADirectoryError) and left the
    temporary folder behind."""
    from serve_app.models_prepare import make_tiny_llama

    out = tmp_path / "tiny-llama"
    out.write_text("left over\n")
    assert make_tiny_llama(out) == out
    assert (out / READY_MARKER).exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_build_leaves_no_temporary_folder(tmp_path: Path, error: BaseException) -> None:
    from serve_app.models_prepare import _build

    def fail(tmp: Path) -> None:
        _write_model(tmp)
        raise error

    with pytest.raises(type(error)):
        _build(tmp_path / "tiny-llama", fail)
    assert list(tmp_path.iterdir()) == []


def _cache_dir_of(site: Path, env: dict[str, str], cwd: Path) -> Path:
    code = "from serve_app.models_prepare import default_cache_dir; print(default_cache_dir())"
    keep = {k: v for k, v in os.environ.items() if k not in ("ACCUWATT_CACHE", "XDG_CACHE_HOME", "HOME")}
    full = {**keep, "PYTHONPATH": str(site), **env}
    done = subprocess.run([sys.executable, "-c", code], env=full, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def test_an_installed_package_caches_models_outside_site_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "serve_app", site / "serve_app", ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    assert _cache_dir_of(site, {"HOME": str(home)}, tmp_path) == home / ".cache" / "accuwatt" / "models"
    xdg = {"HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert _cache_dir_of(site, xdg, tmp_path) == tmp_path / "xdg" / "accuwatt" / "models"
    own = {**xdg, "ACCUWATT_CACHE": str(tmp_path / "mine")}
    assert _cache_dir_of(site, own, tmp_path) == tmp_path / "mine"  # the variable still wins
    # a source checkout keeps <repo>/.cache/models
    monkeypatch.delenv("ACCUWATT_CACHE", raising=False)
    assert default_cache_dir() == REPO / ".cache" / "models"
