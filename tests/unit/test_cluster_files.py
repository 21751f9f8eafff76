"""The `ray up` config validates against Ray's autoscaler schema, the KubeRay RayService has the CRD's
required structure, and the Serve config embedded in it is a valid ``AppConfig``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

from serve_app.config import AppConfig
from serve_app.env import RAY_NODE_ENV
from serve_app.sweep.config import SweepFile, classifier_specs

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_ray_up_config_matches_autoscaler_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / "ray-up.example.yaml").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any(t["resources"].get("GPU") for t in cfg["available_node_types"].values())


def test_kuberay_rayservice_structure_and_serve_config() -> None:
    doc = yaml.safe_load((CLUSTER / "kuberay-rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService" and doc["metadata"]["name"]
    spec = doc["spec"]
    rc = spec["rayClusterConfig"]
    head = rc["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in rc.get("workerGroupSpecs", []):
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["template"]["spec"]["containers"][0]["image"]
        assert group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 10**6)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD wants strings
    serve_cfg = yaml.safe_load(spec["serveConfigV2"])
    assert serve_cfg["proxy_location"] == "HeadOnly"
    app = serve_cfg["applications"][0]
    assert app["import_path"] == "serve_app.app:build_app"
    AppConfig.model_validate(app["args"])
    local = yaml.safe_load((CLUSTER.parent / "deployments" / "local.yaml").read_text())
    assert [c["id"] for c in app["args"]["classifiers"]] == [
        c["id"] for c in local["applications"][0]["args"]["classifiers"]
    ]


def test_sweep_files_validate() -> None:
    files = sorted((CLUSTER / "topologies").glob("*.yaml"))
    assert {f.name for f in files} >= {"cpu-smoke.yaml", "study-gpus.yaml"}
    for f in files:
        sweep = SweepFile.from_yaml(f)
        for topo in sweep.topologies:
            AppConfig.model_validate({"classifiers": classifier_specs(sweep, topo)})


def test_cluster_files_give_every_node_the_ray_node_env() -> None:
    """The nodes ``ray up`` and KubeRay start get what ``serve_app.env.RAY_NODE_ENV`` gives the nodes
    accuwatt starts itself, with the same values."""
    ray_up = yaml.safe_load((CLUSTER / "ray-up.example.yaml").read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in ray_up[key]]
    starts = [c for c in starts if " ray start " in f" {c} "]
    assert len(starts) == 2
    for command in starts:
        for key, value in RAY_NODE_ENV.items():
            assert f"{key}={value} " in command, (key, command)
    rc = yaml.safe_load((CLUSTER / "kuberay-rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    groups = [rc["headGroupSpec"], *rc["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert {k: env.get(k) for k in RAY_NODE_ENV} == RAY_NODE_ENV, container["name"]
