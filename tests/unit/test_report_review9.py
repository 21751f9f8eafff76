"""Review round 9 of ``accuwatt report``: each test builds real run folders (run.json + records.jsonl)
under tmp_path, runs the real report on them, and checks its figures against a recomputation from the
records written here."""

import json
import math

import pandas as pd
import pytest

from serve_app.replay.records import EnergyTag, Record
from serve_app.report.cli import build_report
from tests.unit.runs import write_run

pytestmark = pytest.mark.unit


def _row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label} "))


def _records(path):
    return [json.loads(line) for line in (path / "records.jsonl").read_text().splitlines() if line.strip()]


def _plan(path, splits, n_test=None):
    """Rewrite the run's run.json to list ``splits`` (write_run lists only the last one it wrote)."""
    meta = json.loads((path / "run.json").read_text())
    meta["splits"] = {s: {"majority_label": "A", "n_test": n_test} for s in splits}
    (path / "run.json").write_text(json.dumps(meta))
    return path


def test_runs_of_different_splits_in_one_table_say_so_above_it(tmp_path):
    # two models of one dataset, replayed on other splits (another --seed): same size, other texts
    res = tmp_path / "res"
    write_run(res, "bow-logreg", [1, 1, 1, 1], 1.0, split="seed1-split0-n8x4", run="s1")
    write_run(res, "tfidf-logreg", [1, 1, 0, 0], 1.0, split="seed7-split0-n8x4", run="s7")
    text = build_report([res], tmp_path / "rep").read_text()
    study = text[text.index("### Accuracy and energy") : text.index("| model | topology")]
    assert "These runs replayed different splits" in study
    assert "bow-logreg: `seed1-split0-n8x4`" in study and "tfidf-logreg: `seed7-split0-n8x4`" in study
    df = pd.read_csv(tmp_path / "rep" / "results.csv").set_index("model")
    assert df.loc["bow-logreg", "splits_replayed"] == "seed1-split0-n8x4"
    # the same splits (a run killed before its second split too: its plan lists both): no warning
    same = tmp_path / "same"
    write_run(same, "bow-logreg", [1] * 4, 1.0)
    _plan(write_run(same, "bow-logreg", [1] * 4, 1.0, split="s1", t0=100.0), ["s0", "s1"])
    _plan(write_run(same, "tfidf-logreg", [1] * 2, 1.0), ["s0", "s1"])
    assert "different splits" not in build_report([same], tmp_path / "rep2").read_text()


def test_accuracy_per_wh_never_drops_a_failed_splits_accuracy(tmp_path):
    res = tmp_path / "res"
    # m1: split s0 answered, split s1 an outage (every request failed: no answer, no energy)
    write_run(res, "m1", [1, 1, 1, 1], 2.0, split="s0")
    m1 = write_run(res, "m1", [1, 1, 1, 1], 2.0, split="s1", failed=(0, 1, 2, 3), t0=100.0)
    # m2: both splits answered, the same energy per request
    write_run(res, "m2", [1, 1, 1, 1], 2.0, split="s0")
    m2 = write_run(res, "m2", [1, 1, 1, 1], 2.0, split="s1", t0=100.0)
    for path in (m1, m2):
        _plan(path, ["s0", "s1"], 4)
    text = build_report([res], tmp_path / "rep").read_text()
    df = pd.read_parquet(tmp_path / "rep" / "results.parquet").set_index("model")

    def per_split(path):  # (accuracy, Wh) of each split, from the records
        out = {}
        for split in ("s0", "s1"):
            rs = [r for r in _records(path) if r["split"] == split]
            hits = sum(1 for r in rs if r["error"] is None and r["predicted"] == r["gold"])
            joules = [r["energy"]["joules"] for r in rs if r["energy"] is not None]
            out[split] = (hits / len(rs), sum(joules) / 3600 if joules else None)
        return out

    s1, s2 = per_split(m1), per_split(m2)
    assert df.loc["m1", "accuracy"] == pytest.approx((s1["s0"][0] + s1["s1"][0]) / 2) == pytest.approx(0.5)
    assert df.loc["m2", "accuracy_per_wh"] == pytest.approx(sum(a / wh for a, wh in s2.values()) / 2)
    # m1's second split has no energy, so no accuracy per Wh: a mean over s0 alone read 450, as high
    # as m2's, which answered twice as many texts right for the same energy per split
    assert s1["s1"][1] is None
    assert df.loc["m1", "accuracy_per_wh"] is None or math.isnan(df.loc["m1", "accuracy_per_wh"])
    assert _row(text, "m1").endswith("| n/a |"), _row(text, "m1")


def test_a_figure_without_a_meter_outages_energy_is_partial_not_a_whole_measurement(tmp_path):
    res = tmp_path / "res"
    gap = write_run(res, "gap", [1, 1, 1, 1], 2.0)
    lines = (gap / "records.jsonl").read_text().splitlines()
    r = json.loads(lines[1])  # open across a meter outage: its figure keeps only what was metered around it
    r["energy"].update(joules=0.5, domains_j={"cpu": 0.5}, flags=["meter_gap"])
    lines[1] = json.dumps(r)
    (gap / "records.jsonl").write_text("\n".join(lines) + "\n")
    write_run(res, "ok", [1, 1, 1, 1], 2.0)
    write_run(res, "ok2", [1, 1, 1, 1], 3.0, total_s=1.5)
    text = build_report([res], tmp_path / "rep").read_text()
    df = pd.read_parquet(tmp_path / "rep" / "results.parquet").set_index("model")
    joules = [rec["energy"]["joules"] for rec in _records(gap)]
    assert df.loc["gap", "energy_wh"] == pytest.approx(sum(joules) / 3600)  # the figure stays, a lower bound
    assert df.loc["gap", "energy_source"] == "rapl (partial)" and df.loc["ok", "energy_source"] == "rapl"
    assert "| rapl (partial) |" in _row(text, "gap")
    # and, as a run with a failed request, it is left out of the energy-vs-duration fit
    assert "Least squares over 2 per-split runs" in text
    assert "1 per-split run(s) left out of the energy-vs-duration fit" in text


def _batched_run(root, model, texts, batch, joules_per_request):
    """A run folder whose requests hold ``batch`` texts each (``--batch-size``), all answered right."""
    path = write_run(root, model, [], 0.0)  # run.json, an empty records.jsonl
    with (path / "records.jsonl").open("w") as f:
        for i in range(0, texts, batch):
            gold = ["A" if j % 2 else "B" for j in range(i, min(i + batch, texts))]
            tag = EnergyTag(joules=joules_per_request, source="rapl", measured=True, domains_j={"cpu": 1.0})
            rec = Record(
                model=model, split="s0", request_index=i // batch, request_id=f"{model}-{i}", session="x",
                text_ids=[str(j) for j in range(i, i + len(gold))], gold=gold, predicted=gold,
                sent_unix_s=10.0 + i, total_s=1.0, latency_s=1.0, energy=tag,
            )  # fmt: skip
            f.write(rec.model_dump_json() + "\n")
    return path


def test_runs_of_different_batch_sizes_say_that_j_per_request_does_not_compare(tmp_path):
    res = tmp_path / "res"
    one = write_run(res, "tfidf-logreg", [1] * 8, 0.2)  # one text a request, 0.2 J each
    eight = _batched_run(res, "bow-logreg", 8, 8, 0.18)  # eight texts in one request, 0.18 J
    text = build_report([res], tmp_path / "rep").read_text()
    # J/request reads alike (0.2 vs 0.18) for runs 8x apart per text: the table must say they differ
    study = text[text.index("### Accuracy and energy") : text.index("| model | topology")]
    assert "These runs sent different numbers of texts per request (1, 8)" in study
    df = pd.read_parquet(tmp_path / "rep" / "results.parquet").set_index("model")
    for model, path in (("tfidf-logreg", one), ("bow-logreg", eight)):
        rs = _records(path)
        joules = sum(r["energy"]["joules"] for r in rs)
        assert df.loc[model, "j_per_request"] == pytest.approx(joules / len(rs))
        assert df.loc[model, "wh_per_1k"] == pytest.approx(
            joules / 3600 * 1000 / sum(len(r["gold"]) for r in rs)
        )
        assert df.loc[model, "batch_size"] == max(len(r["gold"]) for r in rs)
    same = tmp_path / "same"
    write_run(same, "tfidf-logreg", [1] * 8, 0.2)
    write_run(same, "bow-logreg", [1] * 8, 0.3)
    assert "texts per request" not in build_report([same], tmp_path / "rep2").read_text()
