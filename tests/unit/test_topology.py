"""Topology pieces without Ray: node-prefixed counter keys, the process-set estimate, the pipeline
spec's placement group, sweep settings and the sweep comparison tables."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from serve_app.classifiers.pipeline_config import PipelineSpec
from serve_app.config_common import EnergyConfig
from serve_app.energy.agents import _combined_source
from serve_app.energy.base import Reading
from serve_app.energy.keys import joules_by_node, node_key, node_of_key
from serve_app.energy.probe import make_node_meter
from serve_app.energy.procset import ProcessSetMeter
from serve_app.sweep.compare import gpus_table, nodes_table
from serve_app.sweep.config import SweepFile, Topology, classifier_specs
from serve_app.topology.nodes import clean_name, name_from


def test_node_keys_keep_the_domain_first() -> None:
    k = node_key("cpu:process", "worker-1")
    assert k == "cpu:worker-1:process" and Reading.domain_of(k) == "cpu" and node_of_key(k) == "worker-1"
    assert node_of_key("gpu:0") is None
    assert joules_by_node({"cpu:head:process": 1.0, "dram:head:process": 0.5, "cpu:w:process": 2.0}) == {
        "head": 1.5,
        "w": 2.0,
    }


def test_node_names() -> None:
    assert name_from({"accuwatt-node": "worker-1"}, "abcdef0123456789") == "worker-1"
    assert name_from({}, "abcdef0123456789") == "abcdef012345"
    assert ":" not in clean_name("a:b c")


def test_process_set_meter_counts_watched_pids() -> None:
    m = make_node_meter(EnergyConfig(meter="estimate"), [os.getpid()], [], "n1")
    assert isinstance(m, ProcessSetMeter)
    r0 = m.read()
    sum(i * i for i in range(300_000))
    r1 = m.read()
    assert r1.energy_j["cpu:process"] > r0.energy_j["cpu:process"] and r1.source == "estimate"
    assert m.info.devices == (f"cpu-process:{os.getpid()}",)


def test_combined_source_is_estimate_if_any_node_is() -> None:
    assert _combined_source(["rapl", "estimate"]) == "estimate"
    assert _combined_source(["rapl", "nvml"]) == "nvml"


def test_pipeline_spec_spreads_two_bundles() -> None:
    spec = PipelineSpec(
        id="t-2n",
        model="tfidf-logreg",
        deployment={"num_cpus": 0.5, "resources": {"node:head": 0.01}},
        feature_resources={"node:worker-1": 0.01},
    )
    opts = spec.serve_options()
    assert opts["placement_group_strategy"] == "STRICT_SPREAD"
    assert opts["placement_group_bundles"] == [
        {"CPU": 0.5, "node:head": 0.01},
        {"CPU": 0.25, "node:worker-1": 0.01},
    ]


def test_sweep_settings() -> None:
    with pytest.raises(ValueError):
        Topology(name="x", gpus=2)  # 2 GPUs need TP x PP = 2
    with pytest.raises(ValueError):
        Topology(name="x", placement_strategy="STRICT_SPREAD")
    sweep = SweepFile(
        name="s",
        models=["bow-logreg", {"kind": "llm", "id": "l", "model": "m", "labels": ["a"]}],
        topologies=[Topology(name="2n", nodes=2, gpus=2, pipeline_parallel=2)],
    )
    trad, llm = classifier_specs(sweep, sweep.topologies[0])
    assert trad["kind"] == "traditional"
    assert (
        llm["pipeline_parallel_size"] == 2 and llm["pipeline_spans_nodes"] and llm["gpus_per_worker"] == 1.0
    )


def test_sweep_tables() -> None:
    base = {"accuracy": 0.8, "n_errors": 0, "energy_missing": 0, "energy_source": "rapl"}
    df = pd.DataFrame(
        [
            {
                **base,
                "model": "m",
                "topology": "1n-1g",
                "nodes": 1,
                "gpus_setting": 1,
                "gpus": 1,
                "energy_wh": 1.0,
                "duration_s": 10.0,
                "avg_power_w": 360.0,
            },
            {
                **base,
                "model": "m",
                "topology": "2n-1g",
                "nodes": 2,
                "gpus_setting": 1,
                "gpus": 1,
                "energy_wh": 2.0,
                "duration_s": 11.0,
                "avg_power_w": 650.0,
            },
            {
                **base,
                "model": "m",
                "topology": "1n-2g",
                "nodes": 1,
                "gpus_setting": 2,
                "gpus": 2,
                "energy_wh": 1.2,
                "duration_s": 6.0,
                "avg_power_w": 720.0,
            },
        ]
    )
    nodes = nodes_table(df)
    assert nodes["energy_ratio"].tolist() == [2.0]
    assert nodes[["topology_1node", "topology_2nodes"]].values.tolist() == [["1n-1g", "2n-1g"]]
    gpus = gpus_table(df)
    assert gpus["energy_ratio"].tolist() == [1.0, pytest.approx(1.2)]
