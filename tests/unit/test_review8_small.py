"""Review 8, small defects: an end-to-end tag capped once at what its node can draw over the router's
window (not at the two shares' caps added); a sweep comparison row names the other settings its two
topologies differ in. Figures are checked against the test's own clock and the devices' stated power.
Units: J, s, W."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import MeterInfo, Reading
from serve_app.energy.overhead import ServingOverhead
from serve_app.energy.tag import add_overhead
from serve_app.energy.window import ReplicaEnergy
from serve_app.models_prepare import default_cache_dir
from serve_app.replay.results import find_runs, load_run
from serve_app.sweep.compare import sweep_report
from serve_app.sweep.config import SweepFile
from tests.unit.runs import write_run

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]

# -- 1: the end-to-end tag's cap ---------------------------------------------------------------------
# A node whose counters can draw 60 W (CPU) + 15 W (DRAM) and draw 40 + 10 W, seen as a node account
# share sees it (an extrapolating meter whose recent miss over a 1 s tick was 10 J: each window's edge
# bound is 20 J, far above what the node can draw over these short windows, so the caps decide).
NODE_MAX_W = 60.0 + 15.0
DRAW_W = {"cpu:node": 40.0, "dram:node": 10.0}


class NodeCounters:
    """The node's cumulative counters as a meter reads them (the device; the code under test is the
    ledger, the windows and the tags built on it)."""

    def __init__(self, t0: float, update_period_s: float, extrapolates: bool) -> None:
        self.t0 = t0
        self._info = MeterInfo(
            "estimate",
            ("cpu:node", "dram:node"),
            resolution_j=1e-3,
            update_period_s=update_period_s,
            node="vm",
            edge_error_j=10.0 if extrapolates else None,
            missed_j=40.0 if extrapolates else None,
            max_power_w={"cpu:node": 60.0, "dram:node": 15.0},
        )

    @property
    def info(self) -> MeterInfo:
        return self._info

    def read(self) -> Reading:
        t = time.monotonic()
        return Reading(t, {k: w * (t - self.t0) for k, w in DRAW_W.items()}, "estimate")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("replica_extrapolates", "before_s"),
    [(True, 0.0), (False, 0.5)],  # a node account share; a counter read as it is (updated every 0.5 s)
)
def test_an_end_to_end_tag_is_capped_once_at_the_nodes_power_over_the_routers_window(
    replica_extrapolates: bool, before_s: float
) -> None:
    """The router's window (0.2 s) encloses the replica's (0.1 s), both shares of the same 75 W node's
    counters: the whole figure and the energy it stands for lie between 0 and 75 W x the router's
    window. Two node account shares: the tag said the two caps added, 75 W x (0.1 + 0.2) s, 7.5 J more
    than the node could draw. A replica counter read as it is can hold 0.5 s before its window: the
    one cap keeps that time (its own edge bound, 75 W x 0.5 s, was below its cap before as well)."""
    cfg = EnergyConfig.model_validate({"meter": "estimate", "sample_period_s": 10})
    t0 = time.monotonic()
    replica = ReplicaEnergy(NodeCounters(t0, 0.5, replica_extrapolates), cfg, "rep-1", [])
    router = ServingOverhead(cfg, "vm", None, single_hop=True)  # starts no meter of its own
    router.energy = ReplicaEnergy(NodeCounters(t0, 1.0, True), router.cfg, "router", [])
    try:
        outer_start = time.monotonic()
        window = router.begin()
        inner_start = time.monotonic()
        time.sleep(0.05)
        model = replica.open("r", 1.0)
        time.sleep(0.1)
        model_tag = model.close()
        time.sleep(0.05)
        inner_end = time.monotonic()
        share = router.end(window)
        outer_end = time.monotonic()
    finally:
        replica.close()
        router.energy.close()
    assert share is not None and model_tag.uncertainty_j is not None
    tag = add_overhead(model_tag, share)
    assert tag.scope == "model+serving" and tag.max_power_w == pytest.approx(NODE_MAX_W)
    assert tag.uncertainty_j is not None and tag.joules is not None
    # the figure itself: the node's draw over the two windows (the test's clock brackets them)
    assert 0.0 < tag.joules <= 50.0 * (outer_end - outer_start) * 2
    most = NODE_MAX_W * (outer_end - outer_start + before_s)
    least = NODE_MAX_W * (inner_end - inner_start + before_s)
    assert tag.uncertainty_j <= most + 1e-9  # before: + 75 W x the replica's window (>= 7.5 J) more
    assert tag.uncertainty_j >= least - 1e-9  # and still covers everything the node drew meanwhile


def test_an_overhead_from_another_node_keeps_the_two_shares_uncertainties_added() -> None:
    """A router on another node than the replica's: its counters are not the tag's, so there is no
    one node to cap the sum by: the two shares' (capped) uncertainties are added."""
    cfg = EnergyConfig.model_validate({"meter": "estimate", "sample_period_s": 10})
    t0 = time.monotonic()
    replica = ReplicaEnergy(NodeCounters(t0, 1.0, True), cfg, "rep-1", [])
    router = ServingOverhead(cfg, "head", None, single_hop=True)
    counters = NodeCounters(t0, 1.0, True)
    counters._info = replace(counters._info, node="head")
    router.energy = ReplicaEnergy(counters, router.cfg, "router", [])
    try:
        window = router.begin()
        model = replica.open("r", 1.0)
        time.sleep(0.05)
        model_tag = model.close()
        share = router.end(window)
    finally:
        replica.close()
        router.energy.close()
    assert share is not None and share.uncertainty_j is not None and model_tag.uncertainty_j is not None
    tag = add_overhead(model_tag, share)
    assert tag.max_power_w is None and tag.nodes == ["head", "vm"]
    assert tag.uncertainty_j == pytest.approx(model_tag.uncertainty_j + share.uncertainty_j)


# -- 2: a sweep comparison between topologies that differ in more than the node or GPU count ---------
def _sweep(tmp_path: Path, text: str) -> dict[str, dict[str, object]]:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return {t.name: t.model_dump() for t in SweepFile.from_yaml(path).topologies}


def _tables(tmp_path: Path, settings: dict[str, dict[str, object]]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    runs = [load_run(p) for p in find_runs([tmp_path / "runs"])]
    md = sweep_report(runs, settings, "t", tmp_path / "report").read_text()
    read = lambda name: pd.read_csv(tmp_path / "report" / name)  # noqa: E731
    return read("sweep_nodes.csv"), read("sweep_gpus.csv"), md


def test_a_node_pair_that_also_differs_in_replicas_and_cpus_says_so(tmp_path: Path) -> None:
    """One node with one replica against two nodes with two replicas (and fewer CPUs per node): the
    row read as the effect of the node count alone."""
    settings = _sweep(
        tmp_path,
        "name: s\nmodels: [bow-logreg]\ntopologies:\n"
        "  - {name: one, nodes: 1, replicas: 1}\n"
        "  - {name: two, nodes: 2, replicas: 2, cpus_per_node: 2}\n"
        "  - {name: two-same, nodes: 2}\n",
    )
    for topo, j in (("one", 1.0), ("two", 1.5), ("two-same", 1.2)):
        write_run(tmp_path / "runs", "bow-logreg", [True] * 20, j, topology=topo)
    nodes, _, md = _tables(tmp_path, settings)
    rows = {r["topology_2nodes"]: r for _, r in nodes.iterrows()}
    assert set(rows) == {"two", "two-same"}
    assert rows["two"]["also_differs_in"] == "replicas 1 vs 2; cpus_per_node 4 vs 2"
    assert rows["two"]["energy_ratio"] == pytest.approx(1.5)  # the ratio stays; the row says what it is
    assert pd.isna(rows["two-same"]["also_differs_in"])  # only the node count differs
    assert "replicas 1 vs 2; cpus_per_node 4 vs 2" in md


def test_the_shipped_gpu_sweep_names_what_else_its_pairs_differ_in(tmp_path: Path) -> None:
    """study-gpus.yaml: the 4-GPU topology also has 8 CPUs per node and STRICT_PACK against the 1-GPU
    base's default; its 2-GPU pair over two nodes is pipeline- against tensor-parallel and SPREAD."""
    sweep = SweepFile.from_yaml(REPO / "cluster" / "topologies" / "study-gpus.yaml")
    settings = {t.name: t.model_dump() for t in sweep.topologies}
    for topo, g, j in [("1gpu", 1, 50.0), ("2gpu", 2, 55.0), ("4gpu", 4, 65.0), ("2gpu-2nodes", 2, 60.0)]:
        write_run(tmp_path / "runs", "llama-3.1-8b", [True] * 20, j, topology=topo, gpus=g)
    nodes, gpus, _ = _tables(tmp_path, settings)
    by_topo = {r["topology"]: r for _, r in gpus.iterrows()}
    assert pd.isna(by_topo["1gpu"]["also_differs_in"])  # the base itself
    assert by_topo["2gpu"]["also_differs_in"] == "placement_strategy default vs STRICT_PACK"
    assert by_topo["4gpu"]["also_differs_in"] == (
        "placement_strategy default vs STRICT_PACK; cpus_per_node 4 vs 8"
    )
    (pair,) = [r for _, r in nodes.iterrows()]
    assert (pair["topology_1node"], pair["topology_2nodes"]) == ("2gpu", "2gpu-2nodes")
    assert pair["also_differs_in"] == (
        "tensor_parallel 2 vs 1; pipeline_parallel 1 vs 2; placement_strategy STRICT_PACK vs SPREAD"
    )


# -- 3: where scripts/test.sh keeps the prepared models ------------------------------------------------
def test_the_test_script_prepares_models_where_accuwatt_looks_for_them_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scripts/test.sh prepared SmolLM2 into .cache while `accuwatt models prepare`, `prepared:smollm2`
    (deployments/llm-cpu.yaml) and the README say .cache/models: a checkout's tests and its LLM
    deployment kept two copies, the second converted (and its wheel fetched) again."""
    (line,) = [
        ln
        for ln in (REPO / "scripts" / "test.sh").read_text().splitlines()
        if ln.startswith("export ACCUWATT_CACHE=")
    ]
    monkeypatch.delenv("ACCUWATT_CACHE", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "ACCUWATT_CACHE"}
    script = f'cd "{REPO}" && {line} && printf %s "$ACCUWATT_CACHE"'
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout) == default_cache_dir() == REPO / ".cache" / "models"
