"""The `ray up` config validates against Ray's autoscaler schema, the KubeRay RayService has the CRD's
required structure, and the Serve config embedded in it is a valid ``AppConfig``; both clusters have
the GPUs of the configs they name, and every pod reads RAPL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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


def _gpu_needs(classifiers: list[Any]) -> tuple[float, float]:
    """(GPUs all replicas hold together, GPUs one replica needs on a single node): a placement group's
    GPU bundles (all on one node under STRICT_PACK, one bundle per node at least otherwise), else the
    deployment's ``num_gpus``."""
    total = one_node = 0.0
    for c in classifiers:
        placement = getattr(c, "placement", None)
        pg = placement() if placement is not None else None
        if pg is None:
            per_replica = node = float(c.deployment.num_gpus)
        else:
            gpus = [float(b.get("GPU", 0)) for b in pg[0]]
            per_replica = sum(gpus)
            node = per_replica if pg[1] == "STRICT_PACK" else max(gpus, default=0.0)
        total += per_replica * c.deployment.num_replicas
        one_node = max(one_node, node)
    return total, one_node


def _config_gpu_needs(rel: str) -> tuple[float, float]:
    """The GPU needs of a Serve config under ``deployments/`` or a sweep file (its largest topology)."""
    path = CLUSTER.parent / rel
    if rel.startswith("cluster/topologies/"):
        sweep = SweepFile.from_yaml(path)
        needs = [
            _gpu_needs(AppConfig.model_validate({"classifiers": classifier_specs(sweep, t)}).classifiers)
            for t in sweep.topologies
        ]
        return max(n[0] for n in needs), max(n[1] for n in needs)
    doc = yaml.safe_load(path.read_text())
    needs = [_gpu_needs(AppConfig.model_validate(app["args"]).classifiers) for app in doc["applications"]]
    return sum(n[0] for n in needs), max(n[1] for n in needs)


def test_the_ray_up_cluster_has_the_gpus_of_every_config_it_names() -> None:
    text = (CLUSTER / "ray-up.example.yaml").read_text()
    cfg = yaml.safe_load(text)
    types = cfg["available_node_types"]
    total = sum(
        float(t["resources"].get("GPU", 0)) * (1 if name == cfg["head_node_type"] else t["min_workers"])
        for name, t in types.items()
    )
    per_node = max(float(t["resources"].get("GPU", 0)) for t in types.values())
    named = sorted(set(re.findall(r"(?:deployments|cluster/topologies)/[A-Za-z0-9._-]+\.yaml", text)))
    assert {"deployments/study-h100.yaml", "deployments/study-h100-2node.yaml"} <= set(named)
    for rel in named:
        need, one_node = _config_gpu_needs(rel)
        assert need <= total, f"{rel} needs {need} GPUs, the ray-up cluster has {total}"
        assert one_node <= per_node, f"{rel} needs {one_node} GPUs on one node, a node has {per_node}"
    assert re.search(r"pip install -e '\.\[[^]]*\bembeddings\b", text), "the embedding models need the extra"


def test_the_kuberay_cluster_has_the_gpus_of_its_serve_config_and_powercap_on_every_pod() -> None:
    doc = yaml.safe_load((CLUSTER / "kuberay-rayservice.yaml").read_text())
    rc = doc["spec"]["rayClusterConfig"]
    groups = [rc["headGroupSpec"], *rc["workerGroupSpecs"]]
    gpus = sum(
        float(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g.get("maxReplicas", 1)
        for g in rc["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
    )
    need, _ = _gpu_needs(
        AppConfig.model_validate(
            yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]
        ).classifiers
    )
    assert need <= gpus
    for group in groups:
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/sys/class/powercap"]
            assert len(mounts) == 1 and mounts[0].get("readOnly") is True, container["name"]
            assert volumes[mounts[0]["name"]]["hostPath"]["path"] == "/sys/class/powercap", container["name"]


def test_llm_specs_of_the_sweep_files_that_name_hub_ids_may_reach_the_hub() -> None:
    """LLM specs default to ``hf_hub_offline: true`` (only the local cache): a hub id needs ``false``."""
    for f in sorted((CLUSTER / "topologies").glob("*.yaml")):
        for m in SweepFile.from_yaml(f).models:
            if (
                isinstance(m, dict)
                and m.get("kind") == "llm"
                and not str(m["model"]).startswith(("/", ".", "~"))
            ):
                assert m.get("hf_hub_offline") is False, (f.name, m["id"])
