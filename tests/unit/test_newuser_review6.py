"""New user's path, review 6: a dataset cell holding several values (a multi-label list, a pre-tokenised
text) is refused instead of becoming a class or a text of its own; one column named for text and label
is refused by name; a torn, foreign or old-library artifact is trained again, never served; the default
demo keeps its models in the checkout whatever the current folder; a second ``accuwatt demo --out DIR``
measures again; an ``--out`` that cannot be a folder is refused before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from serve_app.app import ensure_artifacts
from serve_app.classifiers.traditional import TraditionalClassifier, read_manifest
from serve_app.cli import main
from serve_app.config import AppConfig
from serve_app.data import Dataset, DatasetError, Split, load_dataset, make_split
from serve_app.demo import demo_app_config
from serve_app.train import train_missing, untrained
from tests.conftest import REPO

pytestmark = pytest.mark.unit

MODEL = "tfidf-logreg"


def _rows(n: int) -> list[dict[str, object]]:
    return [
        {"text": f"text number {i} about {'apples' if i % 2 else 'pears'}", "label": i % 2} for i in range(n)
    ]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("accuwatt: error: "), err
    return err[0]


def test_a_multi_label_list_is_refused_not_made_a_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``[3, 27]`` became the class ``"[3, 27]"`` (and a Parquet list numpy's ``"[3 27]"``): a
    multi-label dataset trained and scored as one class per combination of labels."""
    rows = _rows(12)
    rows[3]["label"] = [0, 1]
    data = tmp_path / "multi.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match="column 'label'.*list"):
        load_dataset(str(data))
    argv = ["evaluate", "--dataset", str(data), "--models", "bow-logreg", "--splits", "1"]
    assert main([*argv, "--n-train", "6", "--n-test", "4"]) == 2
    assert "multi-label" in _error_line(capsys)

    parquet = tmp_path / "multi.parquet"
    pd.DataFrame({"text": [r["text"] for r in _rows(6)], "label": [[1, 2], [2], [1]] * 2}).to_parquet(parquet)
    with pytest.raises(DatasetError, match="column 'label'"):
        load_dataset(str(parquet))


def test_a_pre_tokenised_text_is_refused_not_trained_as_its_repr(tmp_path: Path) -> None:
    """A Parquet list of tokens was trained on as the text ``"['a' 'b']"`` (numpy's repr, cut with
    ``...`` past 1000 tokens)."""
    parquet = tmp_path / "tokens.parquet"
    pd.DataFrame({"text": [["good", "film"], ["bad", "film"], ["fine"]], "label": [1, 0, 1]}).to_parquet(
        parquet
    )
    with pytest.raises(DatasetError, match="column 'text'.*one value per row"):
        load_dataset(str(parquet))


def test_one_column_for_text_and_label_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both flags naming one column read every row as the column's name: ``need at least two labels,
    found ['label']``, the name taken for a label, whatever the data held."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    argv = ["train", "--dataset", str(data), "--text-col", "label", "--label-col", "label"]
    assert main([*argv, "--out", str(tmp_path / "art")]) == 2
    assert "both 'label'" in _error_line(capsys)


@pytest.fixture(scope="module")
def demo_split() -> tuple[Dataset, Split]:
    ds = load_dataset("demo")
    return ds, make_split(ds, 60, 20, seed=7, index=0)


def _fresh(tmp_path: Path, demo_split: tuple[Dataset, Split]) -> Path:
    ds, split = demo_split
    assert train_missing(split, [MODEL], tmp_path, ds) == [MODEL]
    assert train_missing(split, [MODEL], tmp_path, ds) == []
    return tmp_path / MODEL


def _damage_manifest(art: Path) -> None:
    (art / "manifest.json").write_text('{"model_id": "tfidf-logreg", "labels": [')


def _truncate_model(art: Path) -> None:
    data = (art / "model.joblib").read_bytes()
    (art / "model.joblib").write_bytes(data[: len(data) // 2])


def _other_model(art: Path) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**manifest, "model_id": "bow-logreg"}))


def _old_library(art: Path) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    versions = {**manifest["versions"], "scikit-learn": "0.24.2"}
    (art / "manifest.json").write_text(json.dumps({**manifest, "versions": versions}))


@pytest.mark.parametrize("damage", [_damage_manifest, _truncate_model, _other_model, _old_library])
def test_a_torn_foreign_or_old_artifact_is_trained_again(
    damage: Callable[[Path], None], tmp_path: Path, demo_split: tuple[Dataset, Split]
) -> None:
    """A manifest that is not JSON raised a JSONDecodeError traceback; a model.joblib cut short, a
    manifest of another model, or one pickled by another scikit-learn was kept and served (the replica
    then failed to start, or served what it was not asked for)."""
    ds, split = demo_split
    art = _fresh(tmp_path, demo_split)
    damage(art)
    assert train_missing(split, [MODEL], tmp_path, ds) == [MODEL]
    assert read_manifest(art)["model_id"] == MODEL
    assert TraditionalClassifier(art).info.labels == ("OFFENSE", "OTHER")
    assert train_missing(split, [MODEL], tmp_path, ds) == []


@pytest.mark.parametrize("damage", [_damage_manifest, _truncate_model, _other_model])
def test_without_train_if_missing_a_torn_artifact_is_refused_as_untrained(
    damage: Callable[[Path], None], tmp_path: Path, demo_split: tuple[Dataset, Split]
) -> None:
    art = _fresh(tmp_path, demo_split)
    assert untrained([MODEL], tmp_path) == []
    damage(art)
    assert untrained([MODEL], tmp_path) == [MODEL]
    cfg = AppConfig.model_validate(
        {"classifiers": [{"kind": "traditional", "id": MODEL}], "artifacts_dir": str(tmp_path)}
    )
    with pytest.raises(FileNotFoundError, match="not trained"):
        ensure_artifacts(cfg)


def test_the_default_demo_keeps_its_models_in_the_checkout_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``artifacts_dir: artifacts/demo`` was read from the current folder: ``accuwatt demo`` run from
    elsewhere trained six models into an ``artifacts/`` folder it made there."""
    monkeypatch.chdir(tmp_path)
    cfg = demo_app_config(models=["bow-logreg"])
    assert Path(cfg["artifacts_dir"]).expanduser().resolve() == REPO / "artifacts" / "demo"


def test_demo_out_that_cannot_be_a_folder_is_one_line_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found only once Ray had started and the models were deployed: a NotADirectoryError traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["demo", "--models", "bow-logreg", "--out", str(blocker / "out")]) == 2
    assert "--out" in _error_line(capsys)


def test_a_second_demo_into_the_same_out_measures_again(tmp_path: Path) -> None:
    """Both runs used the run name ``demo``: the second resumed the first's folder, found every request
    recorded, sent none, and printed the first run's accuracy and energy as its own."""
    config = tmp_path / "demo.yaml"
    config.write_text(
        json.dumps(
            {
                "artifacts_dir": str(tmp_path / "art"),
                "train_if_missing": {"dataset": "demo", "n_train": 40, "n_test": 8},
                "classifiers": [{"kind": "traditional", "id": "bow-logreg"}],
            }
        )
    )
    out = tmp_path / "out"
    # each run as a user runs it, in a process of its own (this one may hold a Ray connection already)
    argv = ["demo", "--config", str(config), "--out", str(out), "--num-cpus", "2", "--concurrency", "2"]
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "serve_app.cli", *argv, "--no-progress"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        (row,) = [ln.split() for ln in done.stdout.splitlines() if ln.startswith("bow-logreg ")]
        assert row[6] == "0", row  # errors (after "<p50> ms")
        records = sorted(out.rglob("records.jsonl"))
        assert len(records) == run, records
        assert all(len(p.read_text().splitlines()) == 8 for p in records)


def test_setup_refuses_an_existing_venv_of_another_python(tmp_path: Path) -> None:
    """A venv already there (an IDE's, ``uv venv``'s) was used whatever its Python: the 3.11 lock went
    into it with pip and uv, or failed at pip with no word why. The interpreter here stands in for a
    Python 3.12 (only 3.11 is on this machine): it logs how it is called and answers ``-V``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    python = venv / "bin" / "python"
    python.write_text(
        f'#!/bin/sh\necho "$*" >>{calls}\n[ "$1" = -V ] && {{ echo "Python 3.12.3"; exit 0; }}\nexit 1\n'
    )
    python.chmod(0o755)
    env = {**os.environ, "ACCUWATT_VENV": str(venv)}
    done = subprocess.run(
        ["bash", "scripts/setup.sh", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "holds Python 3.12.3" in done.stderr and "CPython 3.11" in done.stderr, done.stderr
    assert "-m pip" not in calls.read_text()
    assert not (venv / "accuwatt-profile").exists()


def test_json_lines_named_json_are_read(tmp_path: Path) -> None:
    """Hugging Face's ``Dataset.to_json("train.json")`` writes JSON Lines; a ``.json`` file holding them
    was refused as ``cannot read ...: Trailing data``. A list of records still reads as before."""
    rows = _rows(12)
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    document = tmp_path / "document.json"
    document.write_text(json.dumps(rows, indent=1))
    for path in (lines, document):
        pool = load_dataset(str(path)).pool
        assert pool is not None and list(pool.texts) == [r["text"] for r in rows]
        assert list(pool.labels) == [str(r["label"]) for r in rows]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "a", "label": 1},')
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(str(broken))


def test_two_training_files_in_one_folder_are_refused_not_one_picked(tmp_path: Path) -> None:
    """``train.csv`` beside ``train.jsonl``: the first by name was used and the other left out, silently."""
    rows = _rows(12)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    with pytest.raises(DatasetError, match="train.csv, train.jsonl"):
        load_dataset(str(tmp_path))


def test_demo_on_too_few_cpus_is_one_line_not_a_wait_without_end(capsys: pytest.CaptureFixture[str]) -> None:
    """``accuwatt demo --num-cpus 1``: the six models and the router ask for 1.75 logical CPUs, Ray never
    placed the last replicas, and the demo waited without end and without a word."""
    assert main(["demo", "--num-cpus", "1", "--no-progress"]) == 2
    line = _error_line(capsys)
    assert "--num-cpus 1" in line and "1.75" in line and "--num-cpus 2" in line, line
