"""Sweep review 6: a rerun after the topology or models changed never resumes (and reports) the old
settings' run folders; a topology its local cluster could never schedule is refused before anything
trains; the local cluster holds the GPUs of every replica; the comparison tables leave the ratios of
runs over different texts or energy scopes empty, saying why. Nothing here starts Ray: a guard makes
any Ray start fail, and where the nodes' resources are checked, Ray's ``Cluster`` is a recorder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serve_app.data import load_dataset
from serve_app.replay.records import EnergyTag, Record
from serve_app.replay.results import find_runs, load_run
from serve_app.replay.runner import run_folder
from serve_app.sweep.compare import sweep_report
from serve_app.sweep.config import SweepFile
from serve_app.sweep.runner import _replay_config, run_topology, sweep_run_folders
from tests.unit.guards import NoRay, one_error
from tests.unit.test_sweep_review import _no_ray  # noqa: F401  (autouse: no Ray start here either)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
CPU = {"1node": {"nodes": 1, "gpus": 0}, "2nodes": {"nodes": 2, "gpus": 0}}


def _file(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- 1: a rerun after the settings changed ----------------------------------------------------------


BASE = "name: s\nn_train: 120\nn_test: 30\nsplits: 1\nconcurrency: 2\n"


TWO = "topologies: [{name: 1node}, {name: 2nodes, nodes: 2}]\n"


@pytest.mark.parametrize(
    ("old", "new", "kept"),
    [
        (  # the two-node topology's replicas
            "models: [bow-logreg]\n" + TWO,
            "models: [bow-logreg]\ntopologies: [{name: 1node}, {name: 2nodes, nodes: 2, replicas: 2}]\n",
            ["1node"],
        ),
        (  # served as a two-stage pipeline instead of one replica
            "models: [bow-logreg]\n" + TWO,
            "models: [bow-logreg]\ntopologies: [{name: 1node}, "
            "{name: 2nodes, nodes: 2, split_stages: true, placement_strategy: STRICT_SPREAD}]\n",
            ["1node"],
        ),
        (  # the model's deployment: every topology's runs are of the old one
            "models: [{kind: traditional, id: bow-logreg}]\n" + TWO,
            "models: [{kind: traditional, id: bow-logreg, deployment: {num_cpus: 1}}]\n" + TWO,
            [],
        ),
    ],
    ids=["replicas", "split-stages", "model-spec"],
)
def test_a_rerun_after_the_settings_changed_neither_resumes_nor_reports_the_old_runs(
    tmp_path: Path, old: str, new: str, kept: list[str]
) -> None:
    before = SweepFile.from_yaml(_file(tmp_path, BASE + old, "old.yaml"))
    after = SweepFile.from_yaml(_file(tmp_path, BASE + new, "new.yaml"))
    out, ds = tmp_path / "out", load_dataset("demo")
    for topo in before.topologies:  # the first sweep ran to the end
        cfg = _replay_config(before, topo, out)
        write_run(run_folder(cfg, ds, "bow-logreg", None), topo.name, "bow-logreg", 30, 1.0, ds.name)
    old_folders = sweep_run_folders(before, out, ds, before.topologies)
    assert len(old_folders) == 2  # the same file again (an interrupted sweep rerun) finds them
    changed = after.topologies[1]
    # the replay of the changed topology writes a folder of its own (it resumed the complete old one,
    # sent nothing and reported the old settings' energy as the new ones')
    assert run_folder(_replay_config(after, changed, out), ds, "bow-logreg", None) not in old_folders
    # the report leaves the old settings' runs out; an unchanged topology keeps its own
    assert [p.parts[-3] for p in sweep_run_folders(after, out, ds, after.topologies)] == kept


# -- 2: topologies a local cluster could never schedule -------------------------------------------


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        # GPUs that do not split over the nodes: the raylet refuses half a GPU (after training)
        ("models: [bow-logreg]\ntopologies: [{name: g, nodes: 2, gpus: 1}]\n", "do not split evenly"),
        # a feature stage asking more CPUs than a node has: the deployment waited 10 minutes
        (
            "models: [{kind: pipeline, id: p, model: bow-logreg, feature_cpus: 8, placement_strategy: PACK}]\n"
            "topologies: [{name: g}]\n",
            "asks 8 CPUs, a local node of this topology has 4",
        ),
        # a node the one-node topology does not have
        (
            "models: [{kind: traditional, id: bow-logreg, deployment: {resources: {'node:worker-1': 0.01}}}]\n"
            "topologies: [{name: g}]\n",
            "'node:worker-1'",
        ),
        # tensor parallelism kept on one node (STRICT_PACK) while each local node has one GPU
        (
            "models: [{kind: llm, id: l, model: m, labels: [a, b]}]\n"
            "topologies: [{name: g, nodes: 2, gpus: 2, tensor_parallel: 2, placement_strategy: STRICT_PACK}]\n",
            "STRICT_PACK group asks 2 GPUs, a local node of this topology has 1",
        ),
    ],
    ids=["gpus-uneven", "cpus", "unknown-node", "strict-pack-gpus"],
)
def test_a_topology_the_local_cluster_could_never_schedule_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, body: str, expect: str
) -> None:
    f = _file(tmp_path, "name: s\nn_train: 20\nn_test: 5\nsplits: 1\n" + body)
    line = one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert "topology g" in line and expect in line, line
    assert not (tmp_path / "out").exists()  # refused before training


class RecordingCluster:
    """Stands in for Ray's ``ray.cluster_utils.Cluster`` (the raylets), recording each node's GPUs."""

    gpus: list[float] = []

    def __init__(self, **kwargs: Any) -> None:
        self.address = "127.0.0.1:1"

    def add_node(self, **kwargs: Any) -> None:
        self.gpus.append(kwargs["num_gpus"])

    def wait_for_nodes(self, timeout: float) -> None:
        pass

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize(
    ("topology", "gpus"),
    [
        ("{name: t, nodes: 1, gpus: 1, replicas: 2}", [2]),  # gpus is per replica: two need two
        ("{name: t, nodes: 2, gpus: 2, pipeline_parallel: 2, placement_strategy: SPREAD}", [1, 1]),
        (
            "{name: t, nodes: 1, gpus: 4, tensor_parallel: 4, placement_strategy: STRICT_PACK, cpus_per_node: 8}",
            [4],
        ),
    ],
    ids=["two-replicas", "pp2-two-nodes", "tp4"],
)
def test_the_local_cluster_holds_the_gpus_of_every_replica(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, topology: str, gpus: list[int]
) -> None:
    import ray.cluster_utils

    RecordingCluster.gpus = []
    monkeypatch.setattr(ray.cluster_utils, "Cluster", RecordingCluster)
    sweep = SweepFile.from_yaml(
        _file(
            tmp_path,
            "name: s\nn_train: 20\nn_test: 5\nsplits: 1\n"
            f"models: [{{kind: llm, id: l, model: m, labels: [a, b]}}]\ntopologies: [{topology}]\n",
        )
    )
    with pytest.raises(NoRay):  # ray.init refuses once the nodes are up
        run_topology(sweep, sweep.topologies[0], tmp_path / "out", {})
    assert RecordingCluster.gpus == gpus


def test_the_shipped_sweep_files_fit_their_local_clusters() -> None:
    from serve_app.sweep.runner import local_nodes

    for name in ("cpu-smoke.yaml", "study-gpus.yaml"):
        sweep = SweepFile.from_yaml(REPO / "cluster" / "topologies" / name)
        for topo in sweep.topologies:
            nodes = local_nodes(sweep, topo)
            assert len(nodes) == topo.nodes and sum(n.num_gpus for n in nodes) == topo.gpus


# -- 3: the comparison tables over runs of different texts or energy scopes ---------------------------


def write_run(path: Path, topo: str, model: str, n: int, joules: float, dataset: str = "ds",
              scope: str = "model", domains: tuple[str, ...] = ("cpu",)) -> Path:  # fmt: skip
    """A run folder as the replay writes it: ``n`` answered requests, each tagged ``joules``."""
    path.mkdir(parents=True)
    meta = {
        "model": model,
        "dataset": dataset,
        "topology_name": topo,
        "run": path.name,
        "splits": {"s0": {"majority_label": "A"}},
        "carbon": {"g_per_kwh": 400.0},
        "topology": {
            "gpus": 0,
            "model": {"id": model, "kind": "traditional", "parameters": 1000, "trainable_parameters": 1000},
        },
    }
    (path / "run.json").write_text(json.dumps(meta))
    share = {d: joules / len(domains) for d in domains}
    with (path / "records.jsonl").open("w") as f:
        for i in range(n):
            energy = EnergyTag(joules=joules, source="rapl", measured=True, domains_j=share, scope=scope)
            r = Record(
                model=model,
                split="s0",
                request_index=i,
                request_id=f"{topo}-{model}-{i}",
                session="x",
                text_ids=[str(i)],
                gold=["A"],
                predicted=["A"],
                status=200,
                sent_unix_s=10.0 + i,
                total_s=1.0,
                latency_s=1.0,
                energy=energy,
            )
            f.write(r.model_dump_json() + "\n")
    return path


def _nodes_row(root: Path) -> pd.Series:
    runs = [load_run(p) for p in find_runs([root / "runs"])]
    sweep_report(runs, CPU, "t", root / "report")
    (row,) = [r for _, r in pd.read_csv(root / "report" / "sweep_nodes.csv").iterrows()]
    return row


def test_a_run_cut_short_makes_no_energy_or_duration_ratio(tmp_path: Path) -> None:
    write_run(tmp_path / "runs/ds/1node/m/r", "1node", "m", 30, 1.0)
    write_run(tmp_path / "runs/ds/2nodes/m/r", "2nodes", "m", 20, 1.0)  # interrupted after 20 of 30
    row = _nodes_row(tmp_path)
    assert pd.isna(row["energy_ratio"]) and pd.isna(
        row["duration_ratio"]
    )  # 0.667: fewer texts, not less energy
    assert "texts replayed differ (30 vs 20)" in row["note"]


def test_runs_of_different_energy_scopes_make_no_energy_ratio(tmp_path: Path) -> None:
    write_run(tmp_path / "runs/ds/1node/m/r", "1node", "m", 30, 1.0, scope="model+serving")
    write_run(tmp_path / "runs/ds/2nodes/m/r", "2nodes", "m", 30, 1.0, scope="model")
    row = _nodes_row(tmp_path)
    assert pd.isna(row["energy_ratio"]) and row["duration_ratio"] == pytest.approx(1.0)
    assert "energy scopes differ (CPU, model+serving vs CPU, model)" in row["note"]


def test_runs_of_the_same_texts_and_scope_keep_their_energy_ratio(tmp_path: Path) -> None:
    write_run(tmp_path / "runs/ds/1node/m/r", "1node", "m", 30, 1.0, scope="model+serving")
    write_run(tmp_path / "runs/ds/2nodes/m/r", "2nodes", "m", 30, 2.0, scope="model+serving")
    row = _nodes_row(tmp_path)
    assert row["energy_ratio"] == pytest.approx(2.0) and pd.isna(row["note"])


# -- 4: GPUs the machine does not list ------------------------------------------------------------------


def test_cluster_up_with_more_gpus_than_cuda_visible_devices_lists_is_one_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ACCUWATT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    line = one_error(capsys, ["cluster", "up", "--workers", "1", "--gpus-per-node", "1"])
    assert "2 GPUs" in line and "CUDA_VISIBLE_DEVICES='0' lists 1" in line


def test_a_sweep_topology_with_more_gpus_than_cuda_visible_devices_lists_is_one_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    f = _file(
        tmp_path,
        "name: s\nmodels: [bow-logreg]\ntopologies: [{name: g, nodes: 2, gpus: 2, tensor_parallel: 2}]\n",
    )
    line = one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert "topology g" in line and "lists 1" in line
    assert not (tmp_path / "out").exists()
