"""Review 9 of bringing one's own dataset: real files under tmp_path through the real ``accuwatt``
command (``serve_app.cli.main``); nothing of the project's own code is replaced."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from serve_app.cli import main
from serve_app.data import load_dataset, study_splits
from tests.unit.guards import forbid_ray, one_error

pytestmark = pytest.mark.unit

FAST = ["--models", "tfidf-logreg"]


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_ray(monkeypatch)


def _jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _evaluate_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    assert main(["evaluate", *FAST, *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_a_csv_text_with_an_unquoted_comma_is_refused_not_read_shifted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the first row has one field more than the header: pandas took the first column for the index,
    # so every text lost its part up to the comma, and the rows without a comma (no label left) were
    # dropped; the run answered on half the data, exit 0
    lines = ["text,label"]
    for i in range(40):
        lab = "pos" if i % 3 else "neg"
        lines.append(f"well, {lab} film {i},{lab}" if i % 2 == 0 else f"{lab} movie {i},{lab}")
    bad = tmp_path / "commas.csv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    line = one_error(capsys, ["evaluate", "--dataset", str(bad), *FAST, "--n-train", "6", "--n-test", "4"])
    assert str(bad) in line and "more fields than the header" in line
    # quoted as a CSV writer quotes it, the same data reads whole
    good = tmp_path / "quoted.csv"
    pd.DataFrame(
        [(ln.rsplit(",", 1)[0], ln.rsplit(",", 1)[1]) for ln in lines[1:]], columns=["text", "label"]
    ).to_csv(good, index=False)
    pool = load_dataset(str(good)).pool
    assert pool is not None and len(pool) == 40 and pool.texts[0] == "well, neg film 0"


def _noise(n: int) -> list[dict[str, str]]:
    """``n`` distinct texts with random labels: a model can only score above chance on a test text by
    having been trained on it."""
    rng = random.Random(7)
    return [
        {"text": f"w{rng.randrange(10**9)} z{rng.randrange(10**9)}", "label": rng.choice("ab")}
        for _ in range(n)
    ]


def test_a_test_text_is_never_trained_on_even_when_the_pool_has_too_few_others(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # every text twice: 80 rows, 40 test rows; the 40 others were filled up with copies of test texts
    data = _jsonl(tmp_path / "twice.jsonl", _noise(40) * 2)
    for split in study_splits(load_dataset(str(data)), 200, 100, 5, seed=20250101):
        assert not set(split.train.texts) & set(split.test.texts), split.key
    out = _evaluate_json(
        capsys, ["--dataset", str(data), "--splits", "2", "--n-train", "200", "--n-test", "100"]
    )
    rows = out["rows"]
    assert isinstance(rows, list) and all(r["n_train"] < 40 for r in rows), rows


def test_a_folder_whose_test_file_repeats_the_training_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # train.jsonl copied to test.jsonl: the models were trained on the test texts, exit 0
    rows = _noise(12)
    _jsonl(tmp_path / "same" / "train.jsonl", rows)
    _jsonl(tmp_path / "same" / "test.jsonl", rows)
    argv = ["--dataset", str(tmp_path / "same"), *FAST, "--n-train", "6", "--n-test", "20"]
    line = one_error(capsys, ["evaluate", *argv])
    assert "every training text is also a test text" in line
    line = one_error(capsys, ["train", *argv, "--out", str(tmp_path / "art")])
    assert "every training text is also a test text" in line
    assert not (tmp_path / "art").exists()


def test_evaluate_reports_the_sizes_it_ran_not_those_asked_for(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # 60 texts: 30 test and 30 training texts per split; the report said 200 / 100
    rows = [{"text": f"{'good' if i % 2 else 'bad'} text {i}", "label": "ab"[i % 2]} for i in range(60)]
    data = _jsonl(tmp_path / "small.jsonl", rows)
    argv = ["--dataset", str(data), "--splits", "2", "--n-train", "200", "--n-test", "100"]
    out = _evaluate_json(capsys, argv)
    assert (out["n_train"], out["n_test"]) == (30, 30)
    assert out["asked"] == {"n_train": 200, "n_test": 100}
    assert all(r["n_test"] == 30 and r["n_train"] == 30 for r in out["rows"])  # type: ignore[attr-defined]
    assert main(["evaluate", *FAST, *argv]) == 0
    assert "2 split(s) of 30 train / 30 test texts (fewer than asked)" in capsys.readouterr().out


def test_a_semicolon_separated_csv_is_refused_with_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A spreadsheet's export with ``;`` reads as one column named ``text;label``: the refusal named the
    missing columns only, not why they were missing."""
    data = tmp_path / "semi.csv"
    data.write_text("text;label\n" + "".join(f"film {i};{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
    line = one_error(capsys, ["evaluate", "--dataset", str(data), *FAST, "--n-train", "6", "--n-test", "4"])
    assert "missing column(s)" in line and "holding ';'" in line and "commas" in line
