"""Config review 4: settings Ray would refuse are config errors (one line, before anything trains or
starts), a classifier may not take the router's deployment name, and `accuwatt cluster up` asks for
whole CPUs and GPUs per node (a raylet refuses fractions)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from serve_app.app import _serve_options, overhead_energy
from serve_app.config import AppConfig
from serve_app.deployment import ClassifierServer
from serve_app.router import Router
from serve_app.topology.local_cluster import NodeSpec, default_nodes
from tests.conftest import REPO
from tests.unit.guards import one_error

pytestmark = pytest.mark.unit

RAY_REFUSES = [
    pytest.param({"resources": {"node:head": -1}}, id="negative-resource"),
    pytest.param({"resources": {"CPU": 1}}, id="CPU-as-resource"),
    pytest.param({"resources": {"GPU": 1}}, id="GPU-as-resource"),
    pytest.param({"resources": {"node:head": 0.00001}}, id="resource-below-unit"),
    pytest.param({"num_cpus": 0.00001}, id="num_cpus-below-unit"),
    pytest.param({"num_gpus": 0.00001}, id="num_gpus-below-unit"),
]


def traditional(deployment: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "traditional", "id": "tfidf-logreg", "deployment": deployment}


@pytest.mark.parametrize("deployment", RAY_REFUSES)
def test_deployment_asks_ray_refuses_are_config_errors(deployment: dict[str, Any]) -> None:
    """Each ask is one Ray Serve itself refuses (checked on the Serve options of the same spec without
    it); the config refuses it first, naming the field."""
    ok = AppConfig.model_validate({"classifiers": [traditional({})]}).classifiers[0]
    options = _serve_options(ok)
    options["ray_actor_options"].update(deployment)
    with pytest.raises(ValueError):
        ClassifierServer.options(**options)
    with pytest.raises(ValidationError) as err:
        AppConfig.model_validate({"classifiers": [traditional(deployment)]})
    assert "deployment." + next(iter(deployment)) in str(err.value)


@pytest.mark.parametrize(
    "router",
    [
        pytest.param({"resources": {"CPU": 1}}, id="CPU-as-resource"),
        pytest.param({"resources": {"node:head": -0.5}}, id="negative-resource"),
        pytest.param({"num_cpus": 0.00001}, id="num_cpus-below-unit"),
    ],
)
def test_router_asks_ray_refuses_are_config_errors(router: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Router.options(ray_actor_options={"num_cpus": 0.25, "resources": {}, **router})
    with pytest.raises(ValidationError) as err:
        AppConfig.model_validate({"classifiers": [traditional({})], "router": router})
    assert "router." + next(iter(router)) in str(err.value)


def test_asks_ray_accepts_stay_accepted() -> None:
    cfg = AppConfig.model_validate(
        {
            "classifiers": [traditional({"num_cpus": 0.0001, "resources": {"node:head": 0.01, "x": 0}})],
            "router": {"num_cpus": 0, "resources": {"node:head": 0.0001}},
        }
    )
    ClassifierServer.options(**_serve_options(cfg.classifiers[0]))


def test_demo_refuses_a_resource_ray_refuses_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`accuwatt demo --config`: one `accuwatt: error:` line, nothing trained (before: the models were
    trained, Ray and Serve started, then a traceback)."""
    art = tmp_path / "art"
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "artifacts_dir": str(art),
                "train_if_missing": {"n_train": 60, "n_test": 10},
                "classifiers": [traditional({"resources": {"node:head": -1}})],
            }
        )
    )
    line = one_error(capsys, ["demo", "--config", str(config), "--out", str(tmp_path / "out")])
    assert "resources" in line and "negative" in line
    assert not art.exists()


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "llm", "id": "router", "model": "/models/m", "labels": ["a", "b"]},
        {"kind": "pipeline", "id": "router", "model": "tfidf-logreg"},
    ],
)
def test_a_classifier_may_not_be_named_like_the_router(spec: dict[str, Any]) -> None:
    """Serve renamed one of two deployments called `router` (`router_1`), and the node accounts count a
    deployment called `router` as serving overhead."""
    with pytest.raises(ValidationError, match="router's deployment name"):
        AppConfig.model_validate({"classifiers": [spec]})


@pytest.mark.parametrize(("flag", "value"), [("--cpus-per-node", "1.5"), ("--gpus-per-node", "0.5")])
def test_cluster_up_refuses_fractional_nodes(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: argparse took them, Ray's raylet refused them with a traceback (exit 1)."""
    monkeypatch.setenv("ACCUWATT_STATE_DIR", str(tmp_path / "state"))
    assert flag in one_error(capsys, ["cluster", "up", "--workers", "0", flag, value])


def test_nodes_refuse_fractional_counts() -> None:
    """`default_nodes` (the CLI) and `NodeSpec` (sweeps build theirs from ``cpus_per_node``)."""
    with pytest.raises(ValueError, match="whole CPUs and GPUs"):
        default_nodes(0, cpus_per_node=1.5)
    with pytest.raises(ValueError, match="whole CPUs and GPUs"):
        default_nodes(0, gpus_per_node=0.5)
    with pytest.raises(ValueError, match="whole CPUs and GPUs"):
        NodeSpec("worker-1", 2, 0, {"disk": 0.5})
    assert NodeSpec("head", 2.0, 1.0).num_cpus == 2


def test_shipped_llm_beside_traditional_config_warns_of_no_energy_difference(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """deployments/llm-cpu.yaml differs only in ``attribution`` (LLMs default to tokens), which the
    overhead does not use (it splits by time): before, every deploy logged that the classifiers differ
    in energy configuration. A real difference (another meter: another node account) is still logged."""
    cfg = AppConfig.from_yaml(REPO / "deployments" / "llm-cpu.yaml")
    assert {c.energy.attribution for c in cfg.classifiers} == {"texts", "tokens"}
    with caplog.at_level(logging.WARNING, logger="accuwatt.app"):
        assert overhead_energy(cfg) == cfg.classifiers[0].energy
    assert not [r for r in caplog.records if "differ in energy" in r.getMessage()]
    other = AppConfig.model_validate(
        {
            "classifiers": [
                traditional({}),
                {"kind": "traditional", "id": "bow-logreg", "energy": {"meter": "off"}},
            ]
        }
    )
    with caplog.at_level(logging.WARNING, logger="accuwatt.app"):
        assert overhead_energy(other) == other.classifiers[0].energy
    assert [r for r in caplog.records if "differ in energy" in r.getMessage()]


def test_kuberay_node_labels_are_group_labels() -> None:
    """KubeRay >= 1.5.0 (the file needs >= 1.5.1 for ``authOptions``) refuses a RayService whose group
    has ``rayStartParams.labels`` (``utils/validation.go: validateRayGroupLabels``: "rayStartParams['labels']
    is not supported ... use the top-level Labels field instead"); the head's ``accuwatt-node`` label is
    a group ``labels`` entry, in Kubernetes label syntax."""
    doc = yaml.safe_load((REPO / "cluster" / "kuberay-rayservice.yaml").read_text())
    rc = doc["spec"]["rayClusterConfig"]
    groups = [rc["headGroupSpec"], *rc.get("workerGroupSpecs", [])]
    for group in groups:
        assert "labels" not in group["rayStartParams"], group.get("groupName", "head")
        for key, value in (group.get("labels") or {}).items():
            assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", key), key
            assert re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", value), value
    assert rc["headGroupSpec"]["labels"]["accuwatt-node"] == "head"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not an AppConfig"),
        ("- a\n- b\n", "not an AppConfig"),
        ("applications:\n  - name: x\n    import_path: serve_app.app:build_app\n", "no args mapping"),
        ("applications: []\n", "no args mapping"),
    ],
)
def test_config_file_that_is_no_config_is_named(tmp_path: Path, text: str, why: str) -> None:
    """``args: {config_file: ...}``: before, a TypeError ('NoneType' object is not iterable) or a
    KeyError ('args') / IndexError from inside the builder."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=why) as err:
        AppConfig.from_args({"config_file": str(path)})
    assert str(path) in str(err.value)


def test_config_file_reads_a_serve_config(tmp_path: Path) -> None:
    cfg = AppConfig.from_args({"config_file": str(REPO / "deployments" / "single-hop.yaml")})
    assert cfg.router.layout == "single_hop"


def _ray_up_gpu_nodes() -> dict[str, float]:
    """Custom resource -> GPUs of the ray-up cluster's GPU node types of exactly one node each."""
    cfg = yaml.safe_load((REPO / "cluster" / "ray-up.example.yaml").read_text())
    out: dict[str, float] = {}
    for t in cfg["available_node_types"].values():
        res = dict(t["resources"])
        gpus = float(res.pop("GPU", 0))
        res.pop("CPU", None)
        if gpus and t["min_workers"] == t["max_workers"] == 1 and len(res) == 1:
            out[next(iter(res))] = gpus
    return out


def test_study_h100_replicas_are_pinned_so_all_16_gpus_fit() -> None:
    """study-h100.yaml needs every GPU of the ray-up cluster; left to Ray, the six 1-GPU replicas split
    3/3 over the two 8-GPU nodes (seen on a real Ray cluster of those nodes: one GPU stranded on each,
    the fifth 2-GPU STRICT_PACK replica pending for ever). Every GPU replica is pinned to one node of
    its own, and no node is asked for more GPUs than it has."""
    nodes = _ray_up_gpu_nodes()
    assert nodes, "ray-up.example.yaml names no GPU node with its own custom resource"
    asked = dict.fromkeys(nodes, 0.0)
    for spec in AppConfig.from_yaml(REPO / "deployments" / "study-h100.yaml").classifiers:
        assert spec.kind == "llm"
        pins = [r for r in spec.deployment.resources if r in nodes]
        assert len(pins) == 1, f"{spec.id} is not pinned to one GPU node of ray-up.example.yaml"
        asked[pins[0]] += spec.gpus_per_replica
    assert all(asked[n] <= nodes[n] for n in nodes), (asked, nodes)


@pytest.mark.parametrize(
    ("resources", "why"),
    [({"x": -1.0}, "cannot be negative"), ({"CPU": 1.0}, "feature_cpus"), ({"x": 0.00001}, "steps of")],
)
def test_a_pipelines_feature_stage_resources_are_what_ray_accepts(
    resources: dict[str, float], why: str
) -> None:
    """A negative feature-stage resource was left out of the stage's bundle without a word, and ``CPU``
    there replaced ``feature_cpus``: each is refused, naming what to set instead."""
    from serve_app.classifiers.pipeline_config import PipelineSpec

    with pytest.raises(ValidationError, match=why):
        PipelineSpec(id="p", model="tfidf-logreg", feature_resources=resources)
    spec = PipelineSpec(id="p", model="tfidf-logreg", feature_resources={"node:w": 0.01})
    assert spec.placement()[0][1] == {"CPU": 0.25, "node:w": 0.01}


def test_a_sweep_topology_takes_whole_cpus_per_node() -> None:
    """A raylet refuses fractional CPUs: the sweep file says so when it is read, not at cluster start."""
    from serve_app.sweep.config import Topology

    with pytest.raises(ValidationError, match="fractional part"):
        Topology(name="t", cpus_per_node=1.5)
    assert Topology(name="t", cpus_per_node=4.0).cpus_per_node == 4


@pytest.mark.parametrize("bad", ["phi3.mini", "router.v2", "m.x_1"])
def test_an_id_that_reads_as_a_method_in_rays_titles_is_refused(bad: str) -> None:
    """Ray titles a replica ``ray::ServeReplica:<app>:<id>`` and adds ``.<method>`` while a method runs:
    ``phi3.mini`` read, while idle, as the deployment ``phi3`` running ``mini`` (``router.v2`` as the
    router), so its energy flipped between groups from tick to tick."""
    from serve_app.classifiers.llm_config import LLMSpec
    from serve_app.classifiers.pipeline_config import PipelineSpec

    with pytest.raises(ValidationError, match="reads as a method"):
        LLMSpec(id=bad, model="/models/m", labels=["a", "b"])
    with pytest.raises(ValidationError, match="reads as a method"):
        PipelineSpec(id=bad, model="tfidf-logreg")


@pytest.mark.parametrize("good", ["qwen-2.5-7b-instruct", "llama-3.1-8b", "phi-3.5-mini", "m"])
def test_an_accepted_id_names_its_replicas_deployment_idle_or_busy(good: str) -> None:
    """Every id the config accepts is what the node account reads from the replica's title, idle or
    while a method runs (what it groups the replica's processes by)."""
    from serve_app.classifiers.llm_config import LLMSpec
    from serve_app.energy.procs import deployment_of

    spec = LLMSpec(id=good, model="/models/m", labels=["a", "b"])
    idle = f"ray::ServeReplica:accuwatt:{spec.id}"
    assert deployment_of(idle) == good
    assert deployment_of(f"{idle}.handle_request_with_rejection") == good
