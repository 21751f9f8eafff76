"""Review 4 of data loading, splits and evaluation: real files under tmp_path and the shared datasets."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from serve_app.cli import main
from serve_app.data import DatasetError, load_dataset, make_split, study_splits
from serve_app.train import evaluate_split
from tests.conftest import SHARED_DATASETS


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_a_text_repeated_in_the_pool_is_never_in_both_train_and_test(tmp_path: Path) -> None:
    # every text twice (reposts, retweets): a random draw puts one copy in each sample
    rows = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(200)] * 2
    ds = load_dataset(str(_jsonl(tmp_path / "dup.jsonl", rows)))
    for split in study_splits(ds, 40, 40, 3, seed=20250101):
        assert len(split.train.rows) == 40 and len(split.test.rows) == 40
        assert not set(split.train.texts) & set(split.test.texts)


def test_a_test_text_also_in_the_training_file_is_not_trained_on() -> None:
    # emotion's official files share 11 texts; split 6 of 1000 training texts drew one of them
    ds = load_dataset(str(SHARED_DATASETS / "emotion"))
    for split in study_splits(ds, 1000, 200, 10, seed=20250101):
        assert len(split.train.rows) == 1000
        assert not set(split.train.texts) & set(split.test.texts)


def test_splits_of_data_without_repeats_are_the_study_draws_as_before() -> None:
    # without repeated texts the training sample is still the rows right after the test sample in
    # the permutation seeded by (seed, index): the splits of earlier runs are unchanged
    import numpy as np

    ds = load_dataset(str(SHARED_DATASETS / "gnad10"))
    split = make_split(ds, 200, 200, 20250101, 4)
    perm = np.random.default_rng([20250101, 4]).permutation(len(ds.pool or ()))
    assert split.test.rows == tuple(int(i) for i in perm[:200])
    assert split.train.rows == tuple(int(i) for i in perm[200:400])


def test_a_binary_parquet_text_column_is_decoded_not_written_as_bytes(tmp_path: Path) -> None:
    texts = ["Über die Straße", "Heute scheint die Sonne", "Der Antrag wurde abgelehnt", "Gut so"]
    frame = pd.DataFrame({"text": [t.encode() for t in texts], "label": [b"a", b"b", b"a", b"b"]})
    frame.to_parquet(tmp_path / "binary.parquet")
    ds = load_dataset(str(tmp_path / "binary.parquet"))
    assert ds.pool is not None and list(ds.pool.texts) == texts
    assert ds.labels == ("a", "b")
    pd.DataFrame({"text": [b"\xff\xfe", b"ok"], "label": ["a", "b"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match="'text'.*not UTF-8"):
        load_dataset(str(tmp_path / "bad.parquet"))


def test_a_label_in_two_unicode_normal_forms_is_one_class(tmp_path: Path) -> None:
    nfc = "Prüfung"
    nfd = unicodedata.normalize("NFD", nfc)
    rows = [{"text": f"Text {i}", "label": [nfc, nfd, "Sonstiges"][i % 3]} for i in range(30)]
    ds = load_dataset(str(_jsonl(tmp_path / "forms.jsonl", rows)))
    assert ds.labels == (nfc, "Sonstiges")
    # and across the two files of a folder: not refused as a test label the training file lacks
    folder = tmp_path / "folder"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"text": f"a {i}", "label": [nfc, "x"][i % 2]} for i in range(6)])
    _jsonl(folder / "test.jsonl", [{"text": f"b {i}", "label": [nfd, "x"][i % 2]} for i in range(6)])
    assert load_dataset(str(folder)).labels == (nfc, "x")


def test_evaluate_reports_test_labels_the_training_sample_lacks(caplog: pytest.LogCaptureFixture) -> None:
    ds = load_dataset(str(SHARED_DATASETS / "gnad10"))  # nine topics; ten training texts miss some
    split = make_split(ds, 10, 100, 20250101, 0)
    lacking = sorted(set(split.test.labels) - set(split.train.labels))
    assert lacking  # the situation under test
    n_lacking = sum(g in lacking for g in split.test.labels)
    with caplog.at_level(logging.WARNING, logger="serve_app.train"):
        (row,) = evaluate_split(split, ["bow-logreg"])
    assert row.accuracy <= 1 - n_lacking / 100
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"{n_lacking} of the 100 test texts" in m and ", ".join(lacking) in m for m in warned), warned


@pytest.mark.parametrize("source", ["data/mine.csv", "~/accuwatt-no-such/mine.jsonl", "a/b/c"])
def test_a_missing_file_is_reported_missing_not_taken_for_a_hub_id(
    source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--dataset", source, "--splits", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"accuwatt: error: dataset not found: {source}"
