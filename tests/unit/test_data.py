"""Datasets from files and folders, and the study's split protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from serve_app.data import DatasetError, load_dataset, make_split, study_splits
from tests.conftest import SHARED_DATASETS


def _rows(n: int) -> list[dict[str, str]]:
    return [{"text": f"text number {i}", "label": "a" if i % 3 else "b"} for i in range(n)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_one_pool_file_gives_disjoint_train_and_test(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(_rows(50))
    path = tmp_path / f"pool{suffix}"
    {
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
        ".csv": lambda: df.to_csv(path, index=False),
        ".parquet": lambda: df.to_parquet(path),
    }[suffix]()
    ds = load_dataset(str(path))
    assert ds.labels == ("a", "b") and ds.pool is not None and len(ds.pool) == 50
    split = make_split(ds, 20, 10, seed=1, index=0)
    assert len(split.train.rows) == 20 and len(split.test.rows) == 10
    assert not set(split.train.rows) & set(split.test.rows)


def test_splits_are_deterministic_and_differ_by_index() -> None:
    ds = load_dataset(str(SHARED_DATASETS / "rotten_tomatoes"))
    a = study_splits(ds, 200, 200, 3, seed=5)
    b = study_splits(ds, 200, 200, 3, seed=5)
    assert [s.test.rows for s in a] == [s.test.rows for s in b]
    assert a[0].test.rows != a[1].test.rows
    assert a[0].train.pool == "train" and a[0].test.pool == "test"  # folder: each split from its own file
    assert a[0].test.ids[0].startswith("test:")


def test_custom_columns_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"body": ["x y", "z w", "u v", "q r"], "cat": ["1", "2", "1", "2"]}).to_csv(
        path, index=False
    )
    assert load_dataset(str(path), text_col="body", label_col="cat").labels == ("1", "2")
    with pytest.raises(DatasetError, match="missing column"):
        load_dataset(str(path))


def test_demo_dataset_is_bundled() -> None:
    ds = load_dataset("demo")
    assert ds.labels == ("OFFENSE", "OTHER")
    assert ds.train is not None and len(ds.train) == 300 and ds.test is not None and len(ds.test) == 200
    first = json.loads((Path(ds.source) / "test.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "label"}


def test_unknown_path_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("./no/such/dir")


def test_a_single_label_is_refused_whatever_the_layout(tmp_path: Path) -> None:
    one = pd.DataFrame([{"text": f"t{i}", "label": "a"} for i in range(20)])
    one.to_json(tmp_path / "pool.jsonl", orient="records", lines=True)
    with pytest.raises(DatasetError, match="at least two labels"):
        load_dataset(str(tmp_path / "pool.jsonl"))
    split = tmp_path / "split"
    split.mkdir()
    one.to_json(split / "train.jsonl", orient="records", lines=True)
    one.to_json(split / "test.jsonl", orient="records", lines=True)
    with pytest.raises(DatasetError, match="at least two labels"):
        load_dataset(str(split))
