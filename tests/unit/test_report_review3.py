"""Review round 3 of ``accuwatt report``: each test builds real run folders (run.json + records.jsonl)
under tmp_path and runs the real report on them."""

import json

import pandas as pd
import pytest

from serve_app.report.cli import build_report
from tests.unit.runs import write_run

pytestmark = pytest.mark.unit


def test_the_reports_regression_leaves_out_runs_with_partial_energy_as_the_sweeps_does(tmp_path):
    res = tmp_path / "res"
    write_run(res, "a", [1, 1, 0, 1], 1.0)  # 4 s, 4 J
    write_run(res, "b", [1] * 8, 2.0)  # 8 s, 16 J
    # 8 s, but only 2 of 8 requests tagged: its 100 J sum is not the run's energy
    write_run(res, "c", [1] * 8, 50.0, untagged=(1, 2, 3, 4, 5, 6))
    text = build_report([res], tmp_path / "rep").read_text()
    fit_line = next(line for line in text.splitlines() if line.startswith("Least squares over"))
    assert fit_line.startswith("Least squares over 2 per-split runs"), fit_line
    assert "1 per-split run(s) left out of the energy-vs-duration fit" in text


def _set_splits(path, splits, **info):
    """Rewrite the run's run.json ``splits`` (as the replay records them: ``data.split_identity``)."""
    meta = json.loads((path / "run.json").read_text())
    meta["splits"] = {
        key: {"dataset": "ds", "fingerprint": "f", "seed": 1, "index": i, "n_train": 8, "n_test": n,
              "majority_label": "A"}
        for i, (key, n) in enumerate(splits.items())
    }  # fmt: skip
    meta.update(info)
    (path / "run.json").write_text(json.dumps(meta))


def _row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label}"))


def test_a_run_killed_before_its_splits_ended_is_marked_incomplete_not_shown_as_cheap(tmp_path):
    res = tmp_path / "res"
    whole = write_run(res, "bow-logreg", [1] * 8, 1.0)
    write_run(res, "bow-logreg", [1] * 8, 1.0, split="s1", t0=100.0)
    _set_splits(whole, {"s0": 8, "s1": 8})
    killed = write_run(res, "tfidf-logreg", [1] * 2, 1.0)  # 2 of split s0's 8 texts, s1 never reached
    _set_splits(killed, {"s0": 8, "s1": 8})
    text = build_report([res], tmp_path / "rep").read_text()
    assert "| tfidf-logreg (incomplete: 2 of 16 texts) |" in _row(text, "tfidf-logreg")
    assert "incomplete" not in _row(text, "bow-logreg")
    df = pd.read_parquet(tmp_path / "rep" / "results.parquet").set_index("model")
    assert df.loc["tfidf-logreg", "n_texts_planned"] == 16 and df.loc["tfidf-logreg", "n_texts"] == 2
    assert df.loc["bow-logreg", "n_texts_planned"] == 16 and df.loc["bow-logreg", "n_texts"] == 16


def test_runs_of_different_test_set_sizes_say_so_above_the_table(tmp_path):
    res = tmp_path / "res"
    _set_splits(write_run(res, "bow-logreg", [1] * 4, 1.0, run="small"), {"s0": 4})
    _set_splits(write_run(res, "tfidf-logreg", [1] * 16, 1.0, run="big"), {"s0": 16})
    text = build_report([res], tmp_path / "rep").read_text()
    assert "These runs differ in texts per split (4, 16)" in text
    head = next(line for line in text.splitlines() if line.startswith("| model | topology | splits"))
    assert "texts/split" in head
    assert _row(text, "bow-logreg").startswith("| bow-logreg | cpu | 1 | 4 |")
    # one size: no warning
    res2 = tmp_path / "res2"
    write_run(res2, "bow-logreg", [1] * 4, 1.0)
    write_run(res2, "tfidf-logreg", [1] * 4, 2.0)
    assert "differ in texts per split" not in build_report([res2], tmp_path / "rep2").read_text()


def test_a_pipe_in_a_topology_name_is_escaped_and_keeps_the_tables_columns(tmp_path):
    res = tmp_path / "res"
    write_run(res, "bow-logreg", [1, 1, 0, 1], 1.0, topology="gpu|a100")
    write_run(res, "bow-logreg", [1, 1, 1, 1], 2.0, topology="cpu")
    text = build_report([res], tmp_path / "rep").read_text()
    lines = text.splitlines()
    rows = 0
    for i, line in enumerate(lines):
        if line.startswith("|--"):  # a table: every row has its header's cells (an escaped | is text)
            cells = lines[i - 1].count("|")
            j = i + 1
            while j < len(lines) and lines[j].startswith("| "):
                assert lines[j].count("|") - lines[j].count("\\|") == cells, lines[j]
                rows, j = rows + 1, j + 1
    assert rows == 8  # 2 runs x 4 tables
    assert "| bow-logreg [gpu\\|a100] | gpu\\|a100 |" in text


def test_a_small_non_zero_gain_or_accuracy_is_never_printed_as_zero():
    from serve_app.report.tables import markdown_table

    df = pd.DataFrame({"label": ["m"], "accuracy": [0.00025], "gain_pp": [0.04], "macro_f1": [0.0]})
    row = markdown_table(df, ["label", "accuracy", "gain_pp", "macro_f1"]).splitlines()[-1]
    assert row == "| m | 0.00025 | 0.04 | 0.000 |"
    df = pd.DataFrame({"label": ["m"], "accuracy": [0.875], "gain_pp": [37.5], "macro_f1": [0.5]})
    assert markdown_table(df, ["label", "accuracy", "gain_pp"]).splitlines()[-1] == "| m | 0.875 | 37.5 |"


def test_overlapping_result_paths_count_each_run_once(tmp_path):
    res = tmp_path / "res"
    write_run(res, "bow-logreg", [1, 1, 0, 1], 1.0)
    write_run(res, "tfidf-logreg", [1] * 8, 2.0)
    write_run(res, "embedding-logreg", [1] * 6, 3.0)
    text = build_report(
        [res, res / "ds", res / "ds" / "cpu" / "bow-logreg" / "r1"], tmp_path / "rep"
    ).read_text()
    assert len(pd.read_csv(tmp_path / "rep" / "results.csv")) == 3
    assert "Least squares over 3 per-split runs" in text


def test_one_dataset_name_over_two_files_data_gets_two_sections(tmp_path):
    res = tmp_path / "res"
    for model, fp in (("bow-logreg", "aaaaaaaa11"), ("tfidf-logreg", "bbbbbbbb22")):
        p = write_run(res, model, [1, 1, 1, 0], 1.0, dataset="data.csv", run=f"r-{fp[:8]}")
        meta = json.loads((p / "run.json").read_text())
        (p / "run.json").write_text(json.dumps({**meta, "fingerprint": fp}))
    text = build_report([res], tmp_path / "rep").read_text()
    assert "## data.csv (data aaaaaaaa)" in text and "## data.csv (data bbbbbbbb)" in text
    first = text[text.index("## data.csv (data aaaaaaaa)") : text.index("## data.csv (data bbbbbbbb)")]
    assert "| bow-logreg |" in first and "tfidf-logreg" not in first


def test_figure_links_work_for_a_dataset_name_with_a_space(tmp_path):
    res = tmp_path / "res"
    write_run(res, "bow-logreg", [1, 1, 0, 1], 1.0, dataset="my data.csv")
    write_run(res, "tfidf-logreg", [1] * 8, 2.0, dataset="my data.csv")
    rep = tmp_path / "rep"
    text = build_report([res], rep).read_text()
    links = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 3
    for link in links:
        assert " " not in link and (rep / link).is_file(), link


def test_a_run_folder_without_records_is_named_as_left_out(tmp_path):
    res = tmp_path / "res"
    write_run(res, "bow-logreg", [1, 1, 0, 1], 1.0)
    empty = write_run(res, "tfidf-logreg", [], 1.0)
    text = build_report([res], tmp_path / "rep").read_text()
    assert f"Left out, no request recorded: `{empty}`." in text
