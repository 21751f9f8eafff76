"""Sweep review findings: the comparison tables on run folders written here (failed requests, missing
energy, recorded GPU counts, duplicate runs), the run folders a sweep reports on, a failing topology,
and sweep files refused or accepted at load. Nothing here starts Ray: a guard makes any Ray start fail
(as a topology whose cluster does not come up), and tests that need Ray's answer record the call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serve_app.cli import main
from serve_app.data import load_dataset
from serve_app.errors import UsageError
from serve_app.replay.records import EnergyTag, Record
from serve_app.replay.results import find_runs, load_run
from serve_app.report.regression import fit_energy_duration
from serve_app.report.tables import results_frames
from serve_app.sweep.compare import regression, sweep_report, with_settings
from serve_app.sweep.config import SweepFile
from serve_app.sweep.runner import _replay_config, run_topology, sweep_run_folders
from tests.unit.guards import NoRay, cluster_env_restored, forbid_ray, one_error

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
CPU = {"1node": {"nodes": 1, "gpus": 0}, "2nodes": {"nodes": 2, "gpus": 0}}


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any Ray start fails (`NoRay`); what a local cluster's start sets is given back afterwards."""
    forbid_ray(monkeypatch, NoRay)
    with cluster_env_restored(monkeypatch):
        yield


def write_run(
    root: Path,
    topo: str,
    model: str,
    n: int,
    joules: float,
    errors: int = 0,
    gpus: int = 0,
    run: str = "r1",
    dataset: str = "ds",
    kind: str = "traditional",
) -> Path:
    """A run folder as the replay writes it: ``n`` requests, the first ``errors`` failed (no energy)."""
    path = root / dataset / topo / model / run
    path.mkdir(parents=True)
    meta = {
        "model": model,
        "dataset": dataset,
        "topology_name": topo,
        "run": run,
        "splits": {"s0": {"majority_label": "A"}},
        "carbon": {"g_per_kwh": 400.0},
        "topology": {
            "gpus": gpus,
            "model": {"id": model, "kind": kind, "parameters": 1000, "trainable_parameters": 1000},
        },
    }
    (path / "run.json").write_text(json.dumps(meta))
    with (path / "records.jsonl").open("w") as f:
        for i in range(n):
            err = i < errors
            energy = EnergyTag(joules=joules, source="rapl", measured=True, domains_j={"cpu": joules})
            r = Record(
                model=model,
                split="s0",
                request_index=i,
                request_id=f"{topo}-{model}-{run}-{i}",
                session="x",
                text_ids=[str(i)],
                gold=["A"],
                predicted=None if err else ["A"],
                error="HTTP 503 model_failed" if err else None,
                status=503 if err else 200,
                sent_unix_s=10.0 + i,
                total_s=1.0,
                latency_s=1.0,
                energy=None if err else energy,
            )
            f.write(r.model_dump_json() + "\n")
    return path


def _report(root: Path, settings: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    runs = [load_run(p) for p in find_runs([root / "runs"])]
    md = sweep_report(runs, settings, "t", root / "report").read_text()
    return (
        pd.read_csv(root / "report" / "sweep_nodes.csv"),
        pd.read_csv(root / "report" / "sweep_gpus.csv"),
        md,
    )


# -- 1: failed requests and missing energy ------------------------------------------------------------


def test_energy_ratio_is_empty_with_a_note_when_failed_requests_differ(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "1node", "bow-logreg", 30, 1.0)
    write_run(tmp_path / "runs", "2nodes", "bow-logreg", 30, 1.0, errors=15)
    write_run(tmp_path / "runs", "1node", "tfidf-logreg", 30, 1.0)
    write_run(tmp_path / "runs", "2nodes", "tfidf-logreg", 30, 1.0, errors=30)
    nodes, _, _ = _report(tmp_path, CPU)
    rows = nodes.set_index("model")
    assert rows["energy_ratio"].isna().all()  # before: bow-logreg 0.5 (half the requests, half the energy)
    bow = rows.loc["bow-logreg"]
    assert (bow["n_errors_1node"], bow["n_errors_2nodes"]) == (0, 15)
    assert (bow["energy_missing_1node"], bow["energy_missing_2nodes"]) == (0, 15)
    assert bow["energy_source_1node"] == "rapl" and "partial" in bow["energy_source_2nodes"]
    assert "failed requests differ (0 vs 15)" in bow["note"]
    assert "no energy in one run" in rows.loc["tfidf-logreg", "note"]


def test_energy_ratio_is_kept_when_both_runs_cover_the_same_requests(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "1node", "bow-logreg", 30, 1.0)
    write_run(tmp_path / "runs", "2nodes", "bow-logreg", 30, 1.5)
    nodes, _, _ = _report(tmp_path, CPU)
    assert nodes["energy_ratio"].tolist() == [pytest.approx(1.5)] and nodes["note"].isna().all()


def test_regression_leaves_out_runs_with_partial_energy(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "1node", "bow-logreg", 30, 1.0)
    write_run(tmp_path / "runs", "2nodes", "bow-logreg", 30, 1.0, errors=15)
    write_run(tmp_path / "runs", "1node", "tfidf-logreg", 20, 2.0)
    _, splits = results_frames([load_run(p) for p in find_runs([tmp_path / "runs"])])
    fit = regression(with_settings(splits, CPU))
    assert fit is not None and fit.n == 2  # before: 3, the half-metered run included
    _, _, md = _report(tmp_path, CPU)
    assert "n = 2 runs x splits" in md and "1 run x split(s) left out" in md


# -- 2: recorded GPU counts ---------------------------------------------------------------------------


def test_gpu_table_and_regression_use_the_recorded_gpus(tmp_path: Path) -> None:
    sweep = SweepFile.from_yaml(REPO / "cluster" / "topologies" / "study-gpus.yaml")
    settings = {t.name: t.model_dump() for t in sweep.topologies}
    for topo, g, j in [("1gpu", 1, 1.0), ("2gpu", 2, 1.1), ("4gpu", 4, 1.3)]:
        write_run(tmp_path / "runs", topo, "bow-logreg", 20, 0.05, gpus=0)  # a CPU model: 0 GPUs
        write_run(tmp_path / "runs", topo, "llama-3.1-8b", 20, j * 50, gpus=g, kind="llm")
    _, gpus, _ = _report(tmp_path, settings)
    assert set(gpus["model"]) == {"llama-3.1-8b"}  # before: bow-logreg at "1, 2, 4 GPUs" too
    assert gpus["gpus"].tolist() == [1, 2, 4]
    assert gpus["energy_ratio"].tolist() == [1.0, pytest.approx(1.1), pytest.approx(1.3)]
    _, splits = results_frames([load_run(p) for p in find_runs([tmp_path / "runs"])])
    splits = with_settings(splits, settings)
    fit = regression(splits)
    expect = fit_energy_duration(
        splits["energy_wh"].to_numpy(), splits["duration_s"].to_numpy(), splits["gpus"].to_numpy()
    )
    assert fit is not None and fit.coefficients == pytest.approx(expect.coefficients)
    assert not np.allclose(splits["gpus"], splits["gpus_setting"])  # the settings would differ


# -- 3: the runs a sweep reports on -------------------------------------------------------------------


def _sweep_file(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_report_takes_this_sweeps_runs_not_an_older_sweeps_in_the_same_out(tmp_path: Path) -> None:
    body = "name: s\nn_train: 120\nn_test: 30\nsplits: 1\nmodels: [bow-logreg]\n"
    body += "topologies: [{name: 1node}, {name: 2nodes, nodes: 2}]\n"
    old = SweepFile.from_yaml(_sweep_file(tmp_path, body + "concurrency: 2\n", "old.yaml"))
    new = SweepFile.from_yaml(_sweep_file(tmp_path, body + "concurrency: 4\n", "new.yaml"))
    out = tmp_path / "out"
    ds = load_dataset("demo")
    for sweep, joules in ((old, 1.0), (new, 3.0)):
        for topo in sweep.topologies:
            run = _replay_config(sweep, topo, out).resolved_run_name(ds.fingerprint)
            write_run(out / "runs", topo.name, "bow-logreg", 30, joules, run=run, dataset=ds.name)
    folders = sweep_run_folders(new, out, ds, new.topologies)
    assert len(folders) == 2 and all("-c4-" in p.name for p in folders)
    assert {load_run(p).records[0].energy.joules for p in folders} == {3.0}  # type: ignore[union-attr]
    # given every run under out/runs, the report refuses rather than picking the first
    with pytest.raises(UsageError, match="2 runs of bow-logreg on topology 1node"):
        sweep_report([load_run(p) for p in find_runs([out / "runs"])], CPU, "s", out / "report")


# -- 4: a failing topology ------------------------------------------------------------------------------


def test_a_failing_topology_is_recorded_and_the_sweep_goes_on_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = _sweep_file(
        tmp_path,
        "name: s\nn_train: 20\nn_test: 5\nsplits: 1\nmodels: [bow-logreg]\n"
        "topologies: [{name: 1node}, {name: 2nodes, nodes: 2}]\n",
    )
    out = tmp_path / "out"
    (out / "report").mkdir(parents=True)
    (out / "report" / "report.md").write_text("an older sweep's report\n")
    rc = main(["sweep", str(f), "--out", str(out)])  # no Ray here: every cluster start fails
    err = capsys.readouterr().err
    assert rc == 1, err
    assert (
        err.strip().splitlines()[-1].startswith("accuwatt: sweep: 2 of 2 topologies failed (1node, 2nodes)")
    )
    state = json.loads((out / "sweep.json").read_text())
    assert state["failed"] == ["1node", "2nodes"]  # the second ran after the first failed
    for name in ("1node", "2nodes"):
        t = state["topologies"][name]
        assert t["status"] == "failed" and "NoRay" in t["error"] and "Traceback" in t["traceback"]
    md = (out / "report" / "sweep.md").read_text()
    assert "### Failed topologies" in md and "- `1node`: NoRay" in md and "- `2nodes`: NoRay" in md
    assert not (out / "report" / "report.md").exists()  # the older sweep's report is not left as this one's


# -- 5, 14: cluster start and connect ---------------------------------------------------------------


def _cpu_sweep() -> SweepFile:
    return SweepFile.model_validate(
        {"name": "s", "n_train": 20, "n_test": 5, "splits": 1, "models": ["bow-logreg"],
         "topologies": [{"name": "2nodes", "nodes": 2}]}
    )  # fmt: skip


class RecordingCluster:
    """Stands in for Ray's ``ray.cluster_utils.Cluster`` (the nodes), recording what is asked of it."""

    calls: list[str] = []

    def __init__(self, **kwargs: Any) -> None:
        self.calls.append("cluster")
        self.address = "127.0.0.1:1"

    def add_node(self, **kwargs: Any) -> None:
        self.calls.append("node")

    def wait_for_nodes(self, timeout: float) -> None:
        self.calls.append("wait")

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_a_local_cluster_is_shut_down_when_the_driver_cannot_connect(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ray.cluster_utils

    RecordingCluster.calls = []
    monkeypatch.setattr(ray.cluster_utils, "Cluster", RecordingCluster)
    with pytest.raises(NoRay):  # ray.init refuses: the connect fails after the nodes started
        run_topology(_cpu_sweep(), _cpu_sweep().topologies[0], tmp_path, {})
    assert RecordingCluster.calls == ["cluster", "node", "node", "wait", "shutdown"]


def test_address_joins_with_a_plain_ray_init(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ray

    asked: list[dict[str, Any]] = []

    def init(**kwargs: Any) -> None:
        asked.append(kwargs)
        raise ConnectionError("no cluster in a unit test")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ConnectionError):
        run_topology(_cpu_sweep(), _cpu_sweep().topologies[0], tmp_path, {}, address="10.0.1.5:6379")
    assert len(asked) == 1 and asked[0]["address"] == "10.0.1.5:6379"
    assert "_node_ip_address" not in asked[0]  # before: 127.0.0.1, no node of a ray-up cluster


# -- 6-10: sweep files at load ------------------------------------------------------------------------


def test_strict_spread_with_more_bundles_than_nodes_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = _sweep_file(
        tmp_path,
        "name: s\nmodels: [{kind: llm, id: l, model: m, labels: [a, b]}]\n"
        "topologies: [{name: pp2, nodes: 2, gpus: 2, pipeline_parallel: 2, placement_strategy: STRICT_SPREAD}]\n",
    )
    line = one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert "topology pp2" in line and "model l" in line and "3 placement-group bundles" in line
    assert not (tmp_path / "out").exists()


def test_the_study_gpus_file_loads_from_the_hub_without_strict_spread() -> None:
    sweep = SweepFile.from_yaml(REPO / "cluster" / "topologies" / "study-gpus.yaml")
    llm = [m for m in sweep.models if isinstance(m, dict) and m.get("kind") == "llm"]
    assert llm and all(m.get("hf_hub_offline") is False for m in llm)
    assert all(t.placement_strategy != "STRICT_SPREAD" for t in sweep.topologies if t.gpus)


def test_traditional_specs_given_as_mappings_are_trained(tmp_path: Path) -> None:
    from serve_app.sweep.runner import _train
    from serve_app.train import untrained

    sweep = SweepFile.model_validate(
        {"name": "s", "n_train": 20, "n_test": 5, "splits": 1,
         "models": ["bow-logreg", {"kind": "traditional", "id": "tfidf-logreg", "deployment": {}},
                    {"kind": "pipeline", "id": "p", "model": "bow-xgboost", "placement_strategy": "PACK"}],
         "topologies": [{"name": "a"}]}
    )  # fmt: skip
    assert sweep.traditional_models() == ["bow-logreg", "tfidf-logreg", "bow-xgboost"]
    arts = _train(sweep, tmp_path / "art", load_dataset("demo"))
    (art,) = arts.values()
    assert untrained(["bow-logreg", "tfidf-logreg", "bow-xgboost"], art) == []


@pytest.mark.parametrize("name", [".", ".."])
def test_topology_names_dot_and_dotdot_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    f = _sweep_file(tmp_path, f"name: s\nmodels: [bow-logreg]\ntopologies: [{{name: '{name}'}}]\n")
    assert "topology name" in one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("value", "expect"),
    [("/nonexistent/model", "no such folder"), ("packaged:no-such-model", "no such packaged model")],
)
def test_a_bad_embedding_model_is_refused_at_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str, expect: str
) -> None:
    f = _sweep_file(
        tmp_path,
        f"name: s\nmodels: [embedding-logreg]\nembedding_model: '{value}'\ntopologies: [{{name: a}}]\n",
    )
    line = one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert "embedding_model" in line and expect in line
    assert not (tmp_path / "out").exists()


def test_a_training_failure_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from serve_app.data import study_splits

    f = _sweep_file(
        tmp_path,
        "name: s\nn_train: 20\nn_test: 5\nsplits: 1\nmodels: [bow-logreg]\ntopologies: [{name: a}]\n",
    )
    out = tmp_path / "out"
    (split,) = study_splits(load_dataset("demo"), 20, 5, 1, 20250101)
    blocked = out / "_artifacts" / split.key / "bow-logreg"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the model's folder goes\n")
    line = one_error(capsys, ["sweep", str(f), "--out", str(out)])
    assert "bow-logreg" in line
