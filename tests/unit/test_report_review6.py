"""Review round 6 of ``accuwatt report``: each test builds real run folders (run.json + records.jsonl)
under tmp_path, as a replay writes them, and runs the real report (or its CLI) on them."""

import json

import pandas as pd
import pytest

from serve_app.replay.records import EnergyTag, Record
from serve_app.report.cli import build_report
from tests.unit.guards import one_error
from tests.unit.runs import write_run

pytestmark = pytest.mark.unit


def _table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and row cells of the first table under ``heading``."""
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line == heading)
    head = next(n for n in range(i, len(lines)) if lines[n].startswith("| "))
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[head:]]
    rows = []
    for line in lines[head + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return cells[0], rows


def test_a_means_energy_components_add_up_to_its_energy_when_a_split_has_no_energy(tmp_path):
    res = tmp_path / "res"
    write_run(res, "m", [1, 1, 0, 1], 3.0)  # s0: 4 tagged requests, 12 J, all CPU
    write_run(res, "m", [1, 1], 3.0, split="s1", t0=100.0, untagged=(0, 1))  # s1: the meter gave nothing
    build_report([res], tmp_path / "rep")
    row = pd.read_parquet(tmp_path / "rep" / "results.parquet").iloc[0]
    assert row["n_splits"] == 2
    assert row["energy_wh"] == pytest.approx(12 / 3600)  # the mean over the split with energy
    # the CPU part of that energy is all of it (the bar of the components figure and the table's
    # CPU column); it was averaged over both splits (6 J)
    assert row["cpu_wh"] == pytest.approx(row["energy_wh"])


def test_a_request_recorded_twice_is_refused_not_counted_twice(capsys, tmp_path):
    res = tmp_path / "res"
    run = write_run(res, "m", [1, 1, 0, 1], 1.0)
    write_run(res, "m", [1, 1], 1.0)  # requests 0 and 1 again (two replays of the folder at once)
    line = one_error(capsys, ["report", str(res), "--out", str(tmp_path / "rep")])
    assert str(run) in line and "2 request(s) more than once" in line and "request 0, 2 times" in line
    assert not (tmp_path / "rep").exists()


def _append(run, **fields):
    base = dict(
        model="m",
        split="s0",
        request_index=99,
        request_id="x",
        session="x",
        text_ids=["a", "b"],
        gold=["A", "B"],
        predicted=["A", "B"],
        sent_unix_s=50.0,
        total_s=1.0,
        latency_s=1.0,
        energy=EnergyTag(joules=1.0, source="rapl", measured=True, domains_j={"cpu": 1.0}),
    )
    with (run / "records.jsonl").open("a") as f:
        f.write(Record(**{**base, **fields}).model_dump_json() + "\n")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"model": "other"}, "holds records of model(s) 'other'; run.json names 'm'"),
        ({"predicted": ["A"]}, "split 's0' request 99 answers 1 labels for 2 texts"),
        ({"split": "s9", "text_ids": [], "gold": [], "predicted": []}, "split 's9' request 99 has no text"),
    ],
)
def test_records_that_do_not_sum_to_one_run_are_one_readable_line(capsys, tmp_path, fields, expected):
    res = tmp_path / "res"
    run = write_run(res, "m", [1, 1, 0, 1], 1.0)
    _append(run, **fields)
    line = one_error(capsys, ["report", str(res), "--out", str(tmp_path / "rep")])
    assert expected in line and str(run) in line


def test_an_out_path_that_is_a_file_is_one_readable_line(capsys, tmp_path):
    res = tmp_path / "res"
    write_run(res, "m", [1, 1, 0, 1], 1.0)
    (tmp_path / "report.md").write_text("mine\n")
    line = one_error(capsys, ["report", str(res), "--out", str(tmp_path / "report.md")])
    assert "--out" in line and "report.md" in line
    assert (tmp_path / "report.md").read_text() == "mine\n"


def _frames(tmp_path):
    from serve_app.replay.results import find_runs, load_run
    from serve_app.report.tables import results_frames

    res = tmp_path / "res"
    write_run(res, "measured-m", [1, 1, 0, 1], 1.0, source="rapl")
    write_run(res, "estimated-m", [1, 1, 1, 1], 2.0, source="estimate")
    return results_frames([load_run(p) for p in find_runs([res])])


def test_every_figure_names_its_energy_source_and_scope_and_draws_an_estimate_apart(tmp_path):
    import matplotlib.pyplot as plt

    from serve_app.report import figures
    from serve_app.report.regression import fit_energy_duration

    means, splits = _frames(tmp_path)
    fit = fit_energy_duration(splits["energy_wh"].to_numpy(), splits["duration_s"].to_numpy(), splits["gpus"])
    drawn = [
        figures.draw_accuracy_energy(means, "t"),
        figures.draw_energy_components(means, "t"),
        figures.draw_energy_duration(splits, fit, "t"),
    ]
    for fig in drawn:
        assert fig is not None
        title = fig.axes[0].get_title()
        assert "estimate (not measured)" in title and "rapl" in title and "scope: CPU, model" in title
    ticks = [t.get_text() for t in drawn[1].axes[0].get_xticklabels()]
    assert sorted(ticks) == ["estimated-m (estimate)", "measured-m"]
    legend = [t.get_text() for t in drawn[2].axes[0].get_legend().get_texts()]
    assert legend == ["CPU only", "CPU only, estimate (not measured)"]
    for fig in drawn:
        plt.close(fig)


def test_the_carbon_and_energy_tables_name_each_rows_energy_source(tmp_path):
    res = tmp_path / "res"
    write_run(res, "measured-m", [1, 1, 0, 1], 1.0, source="rapl")
    write_run(res, "estimated-m", [1, 1, 1, 1], 2.0, source="estimate", failed=(3,))
    text = build_report([res], tmp_path / "rep").read_text()
    for heading in (
        "### Carbon, CEGI and latency",
        "### Energy by component",
        "### Accuracy and energy (the study's table)",
    ):
        head, rows = _table(text, heading)
        src = head.index("energy source")
        by_model = {r[0]: r[src] for r in rows}
        assert by_model == {"measured-m": "rapl", "estimated-m": "estimate (partial)"}, heading
    head, rows = _table(text, "### Energy by component")
    assert {r[head.index("scope")] for r in rows} == {"CPU, model"}


def test_errors_are_totals_over_splits_and_the_definitions_say_so(tmp_path):
    res = tmp_path / "res"
    run = write_run(res, "m", [1, 1, 0, 1], 1.0, failed=(0,))
    write_run(res, "m", [1, 1, 0, 1], 1.0, split="s1", t0=100.0, failed=(2,))
    meta = json.loads((run / "run.json").read_text())
    meta["splits"] = {"s0": {"majority_label": "A"}, "s1": {"majority_label": "A"}}
    (run / "run.json").write_text(json.dumps(meta))
    text = build_report([res], tmp_path / "rep").read_text()
    head, rows = _table(text, "### Carbon, CEGI and latency")
    assert rows[0][head.index("errors")] == "2"  # one per split: a total, not the mean of 1
    assert "except the counts (errors, steady requests), which\nare totals over them" in text


def test_whole_numbers_in_a_column_with_a_gap_print_as_whole_numbers():
    from serve_app.report.tables import markdown_table

    df = pd.DataFrame(
        [
            {"label": "a", "trainable_parameters": 7419, "parameters": 22_713_216},
            {"label": "b", "trainable_parameters": None, "parameters": 134_515_008},
        ]
    )
    lines = markdown_table(df, ["label", "trainable_parameters", "parameters"]).splitlines()
    assert lines[-2:] == ["| a | 7419 | 22713216 |", "| b | n/a | 134515008 |"]


def _window(run, reset):
    line = {
        "model": "m",
        "split": "s0",
        "session": "x",
        "start_unix_s": 10.0,
        "end_unix_s": 14.0,
        "sent": 4,
        "energy_delta": {"metered_j": 10.0, "attributed_j": 4.0, "idle_j": 6.0, "reset": reset},
    }
    (run / "windows.jsonl").write_text(json.dumps(line) + "\n")


@pytest.mark.parametrize("reset", [False, True])
def test_idle_energy_over_a_window_where_a_replica_restarted_is_unknown_not_a_lower_bound(tmp_path, reset):
    res = tmp_path / "res"
    _window(write_run(res, "m", [1, 1, 0, 1], 1.0), reset)
    build_report([res], tmp_path / "rep")
    row = pd.read_parquet(tmp_path / "rep" / "results.parquet").iloc[0]
    if reset:  # the delta counts the restarted replica from zero: what it drew before is missing
        assert pd.isna(row["idle_wh"]) and pd.isna(row["metered_j"])
    else:
        assert row["idle_wh"] == pytest.approx(6.0 / 3600) and row["metered_j"] == pytest.approx(10.0)


def test_the_same_run_under_two_results_folders_gets_two_labels(tmp_path):
    a = write_run(tmp_path / "machine-a", "m", [1, 1, 0, 1], 1.0)
    b = write_run(tmp_path / "machine-b", "m", [1, 1, 1, 1], 9.0)
    text = build_report([tmp_path / "machine-a", tmp_path / "machine-b"], tmp_path / "rep").read_text()
    head, rows = _table(text, "### Accuracy and energy (the study's table)")
    assert sorted(r[0] for r in rows) == [f"m ({a})", f"m ({b})"]
    labels = pd.read_csv(tmp_path / "rep" / "results.csv")["label"]
    assert labels.nunique() == 2


def test_two_datasets_whose_names_make_one_file_name_keep_their_own_figures(tmp_path):
    res = tmp_path / "res"
    write_run(res, "m", [1, 1, 0, 1], 1.0, dataset="a b")
    write_run(res, "m", [1, 1, 1, 1], 2.0, dataset="a_b")
    rep = tmp_path / "rep"
    text = build_report([res], rep).read_text()
    links = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 4 and len(set(links)) == 4, links  # scatter and components of each section
    assert all((rep / link).is_file() for link in links)


def test_a_corrupt_records_line_is_named_by_file_and_line(capsys, tmp_path):
    res = tmp_path / "res"
    run = write_run(res, "m", [1, 1, 0, 1], 1.0)
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    broken = json.loads(lines[2])
    del broken["gold"]
    lines[2] = json.dumps(broken) + "\n"
    (run / "records.jsonl").write_text("".join(lines))
    line = one_error(capsys, ["report", str(res), "--out", str(tmp_path / "rep")])
    assert line.endswith(f"{run}: not an accuwatt run folder: records.jsonl line 3: gold: Field required")
    # a run.json fault names run.json
    (run / "run.json").write_text("{}")
    line = one_error(capsys, ["report", str(res), "--out", str(tmp_path / "rep")])
    assert line.endswith("not an accuwatt run folder: run.json: model: Field required")
