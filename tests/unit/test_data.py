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


def test_whole_number_labels_name_one_class_whatever_pandas_reads(tmp_path: Path) -> None:
    # an integer label column with one null reads as float in pandas (1.0); the clean test file as 1
    train = [{"text": f"good {i}", "label": 1} for i in range(6)] + [
        {"text": f"bad {i}", "label": 2} for i in range(6)
    ]
    train.append({"text": "unlabelled", "label": None})
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train))
    test = [{"text": "good x", "label": 1}, {"text": "bad x", "label": 2}]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in test))
    ds = load_dataset(str(tmp_path))
    assert ds.labels == ("1", "2")
    assert ds.train is not None and len(ds.train) == 12  # the unlabelled row is left out


def test_empty_labels_are_left_out_as_in_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a b", "c d", "e f", "g h"], "label": ["x", "", "y", "x"]}).to_csv(
        path, index=False
    )
    ds = load_dataset(str(path))
    assert ds.labels == ("x", "y") and ds.pool is not None and len(ds.pool) == 3


def test_test_labels_the_training_file_lacks_are_refused(tmp_path: Path) -> None:
    pd.DataFrame(_rows(12)).to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    test = pd.DataFrame([{"text": "t1", "label": "a"}, {"text": "t2", "label": "c"}])
    test.to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    with pytest.raises(DatasetError, match=r"test labels \['c'\] never occur in the training split"):
        load_dataset(str(tmp_path))


def test_byte_order_mark_is_read_and_unreadable_files_are_dataset_errors(tmp_path: Path) -> None:
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in _rows(6)).encode())
    assert load_dataset(str(bom)).labels == ("a", "b")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(str(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(str(broken))


def test_the_label_column_is_part_of_the_dataset_identity(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "fine": "xyz"[i % 3]} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    coarse, fine = load_dataset(str(path)), load_dataset(str(path), label_col="fine")
    assert coarse.fingerprint != fine.fingerprint and fine.labels == ("x", "y", "z")
    assert load_dataset(str(path)).fingerprint == coarse.fingerprint


def test_cli_refuses_a_bad_dataset_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from serve_app.cli import main

    (tmp_path / "empty.csv").write_text("")
    assert main(["evaluate", "--dataset", str(tmp_path / "empty.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("accuwatt: error: cannot read") and "\n" not in err
