"""Third review of the classifiers and the replica side, without Ray or Serve (no Ray may start here:
``guards.forbid_ray``). Meters are RAPL trees the test writes; classifiers are trained here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve_app.config import AppConfig, ClassifierSpec
from serve_app.deployment import build_meter
from tests.unit.guards import NoRay, forbid_ray
from tests.unit.test_replica_energy import Package

pytestmark = pytest.mark.unit


def _spec(raw: dict[str, Any]) -> ClassifierSpec:
    return AppConfig.model_validate({"classifiers": [raw]}).classifiers[0]


def test_a_traditional_replica_on_a_gpu_its_meter_does_not_read_is_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedding model on a GPU replica (``deployment.num_gpus``: its encoder runs on the GPU) whose
    meter reads no GPU got tags without ``gpus_not_metered``: CPU energy passed off as the whole (only
    LLM specs were checked). Outside Ray the replica's GPUs are not located: flagged, as for an LLM."""
    from serve_app.energy.rapl import rapl_available

    forbid_ray(monkeypatch, NoRay)
    rapl_available.cache_clear()
    Package(tmp_path / "rapl")
    energy = {"meter": "rapl", "rapl_root": str(tmp_path / "rapl"), "node_account": False}
    flags = {}
    for name, gpus in (("gpu", 1), ("cpu", 0)):
        spec = _spec(
            {
                "kind": "traditional",
                "id": "embedding-logreg",
                "deployment": {"num_gpus": gpus},
                "energy": energy,
            }
        )
        meter, flags[name] = build_meter(spec, [])
        assert meter.info.source == "rapl"
        meter.close()
    assert flags == {"gpu": ["gpus_not_metered"], "cpu": []}


def _train(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from serve_app.cli import main

    rc = main(["train", "--n-train", "20", "--n-test", "10", "--models", "embedding-logreg", *args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("content", ["empty", "junk", "config_without_model_type"])
def test_a_folder_that_holds_no_encoder_is_one_line_naming_it(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--embedding-model`` naming a folder that exists but holds no sentence-transformers model (a
    typo for its parent, a download that did not finish) ended in transformers' ValueError traceback:
    only OSError was turned into the one-line refusal that names the folder."""
    folder = tmp_path / "encoder"
    folder.mkdir()
    if content == "junk":
        (folder / "README.txt").write_text("not a model\n")
    elif content == "config_without_model_type":
        (folder / "config.json").write_text("{}\n")
    rc, err = _train(["--embedding-model", str(folder), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert f"--embedding-model {folder}:" in err and "is not a sentence-transformers model" in err
    assert not (tmp_path / "o" / "embedding-logreg").exists()


def test_an_empty_embedding_model_is_refused_not_read_as_the_working_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--embedding-model ""`` (an unset shell variable) was taken as ``Path("")``, the working
    folder, recorded as the encoder and loaded: a traceback, or a model nobody named."""
    from serve_app.classifiers import embedding
    from serve_app.errors import UsageError

    monkeypatch.chdir(tmp_path)
    for name in ("", "  "):
        with pytest.raises(UsageError, match="empty name"):
            embedding.canonical_name(name)
    rc, err = _train(["--embedding-model", "", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--embedding-model: empty name" in err, err


def test_tfidf_without_character_ngrams_is_refused_without_pointing_at_tfidf() -> None:
    """Training texts of one character each (single emoji or CJK characters) give character 2-3-grams
    nothing to count: tfidf was refused with bag of words' message, which told the user to use tfidf."""
    from serve_app.classifiers.traditional import fit
    from serve_app.errors import UsageError

    texts, labels = ["\U0001f44d", "\U0001f44e", "\u597d", "\u574f"] * 5, ["pos", "neg"] * 10
    with pytest.raises(UsageError) as tfidf:
        fit("tfidf-logreg", texts, labels)
    assert "character n-grams have nothing to count" in str(tfidf.value)
    assert "tfidf" not in str(tfidf.value)
    with pytest.raises(UsageError, match="bag of words has nothing to count; use the tfidf"):
        fit("bow-logreg", texts, labels)


def test_a_save_that_fails_midway_leaves_the_previous_artifact_loadable(tmp_path: Path) -> None:
    """``save`` wrote ``model.joblib`` in place: one that failed while writing (disk full; here an
    object that cannot be pickled) left a truncated model beside the previous manifest, an artifact
    that looked complete (``train_missing`` kept it) and failed every replica start with EOFError."""
    import asyncio
    import dataclasses

    from serve_app.classifiers.traditional import TraditionalClassifier, fit, save

    texts, labels = ["good film", "bad movie", "great stuff", "awful plot"] * 5, ["pos", "neg"] * 10
    model = fit("bow-logreg", texts, labels)
    art = tmp_path / "bow-logreg"
    first = save(model, art, ("neg", "pos"), {"split": {"index": 0}})
    broken = dataclasses.replace(model, vectorizer=[model.vectorizer, lambda x: x])  # fails mid-pickle
    with pytest.raises(Exception, match="pickle"):
        save(broken, art, ("neg", "pos"), {"split": {"index": 1}})
    clf = TraditionalClassifier(art)
    assert clf.manifest == first
    probe = ["good film", "awful plot"]
    preds = asyncio.run(clf.predict(probe))
    assert [p.label for p in preds] == [model.classes[i] for i in model.predict_proba(probe).argmax(axis=1)]
    assert sorted(p.name for p in art.iterdir()) == ["manifest.json", "model.joblib"]
