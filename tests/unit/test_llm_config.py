"""LLMSpec validation, the Ray resources it asks for, and every LLM Serve config in deployments/."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.classifiers.llm_config import LLMSpec
from serve_app.config import AppConfig
from serve_app.env import WORKER_ENV

pytestmark = pytest.mark.unit

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
LLM_CONFIGS = sorted(p for p in DEPLOYMENTS.glob("*.yaml") if "kind: llm" in p.read_text())


def spec(**kw: object) -> LLMSpec:
    base: dict[str, object] = {"id": "m", "model": "/models/m", "labels": ["a", "b"]}
    base.update(kw)
    return LLMSpec.model_validate(base)


def test_llm_config_files_exist() -> None:
    names = {p.name for p in LLM_CONFIGS}
    assert {"llm-cpu.yaml", "study-h100.yaml", "study-h100-2node.yaml"} <= names


@pytest.mark.parametrize("path", LLM_CONFIGS, ids=lambda p: p.name)
def test_every_llm_config_parses_and_its_resources_add_up(path: Path) -> None:
    config = AppConfig.from_yaml(path)
    llms = [c for c in config.classifiers if isinstance(c, LLMSpec)]
    assert llms
    for s in llms:
        opts = s.serve_options()
        actor = opts["ray_actor_options"]
        env = actor["runtime_env"]["env_vars"]
        assert all(isinstance(v, str) for v in env.values())
        bundles = opts.get("placement_group_bundles")
        gpus_in_bundles = sum(b.get("GPU", 0) for b in bundles or [])
        assert gpus_in_bundles == s.gpus_per_replica == s.gpus_per_worker * s.world_size
        if bundles is not None:
            assert bundles[0]["CPU"] == actor["num_cpus"]  # the replica actor fits its bundle
            assert bundles[0].get("GPU", 0) == actor["num_gpus"]
            assert all(v > 0 for b in bundles for v in b.values())
        if not s.on_gpu:
            assert "VLLM_CPU_KVCACHE_SPACE" in env


def test_study_has_the_eleven_models_on_sixteen_gpus() -> None:
    config = AppConfig.from_yaml(DEPLOYMENTS / "study-h100.yaml")
    llms = [c for c in config.classifiers if isinstance(c, LLMSpec)]
    assert len(llms) == 11
    two = {s.id for s in llms if s.gpus_per_replica == 2}
    assert two == {
        "llama-3.1-70b-instruct",
        "qwen-2.5-72b-instruct",
        "phi-3.5-moe-instruct",
        "jamba-1.5-mini",
        "deepseek-r1-distill-llama-70b",
    }
    assert sum(s.gpus_per_replica for s in llms) == 16
    assert {s.id for s in llms if s.reasoning} == {
        "deepseek-r1-distill-llama-8b",
        "deepseek-r1-distill-llama-70b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-qwen-32b",
    }
    for s in llms:
        if s.world_size > 1:
            assert s.tensor_parallel_size == 2 and s.pipeline_parallel_size == 1
            assert s.executor_backend == "ray"
            assert s.serve_options()["placement_group_strategy"] == "STRICT_PACK"


def test_two_node_variant_uses_pipeline_stages_across_nodes() -> None:
    config = AppConfig.from_yaml(DEPLOYMENTS / "study-h100-2node.yaml")
    for s in config.classifiers:
        assert isinstance(s, LLMSpec)
        assert (s.tensor_parallel_size, s.pipeline_parallel_size) == (1, 2)
        opts = s.serve_options()
        assert opts["placement_group_strategy"] in ("PACK", "SPREAD")
        assert opts["placement_group_bundles"][1:] == [{"CPU": 1.0, "GPU": 1.0}] * 2


def test_tp2_gpu_bundles() -> None:
    s = spec(tensor_parallel_size=2, deployment={"num_cpus": 0.5}, cpus_per_worker=2)
    opts = s.serve_options()
    assert opts["placement_group_bundles"] == [{"CPU": 0.5}, {"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}]
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert opts["ray_actor_options"]["num_gpus"] == 0
    assert s.executor_backend == "ray"


def test_tp2_gpu_with_mp_workers_gives_the_replica_both_gpus() -> None:
    """mp workers are the replica's descendants: they see only the GPUs Ray assigns the replica."""
    s = spec(tensor_parallel_size=2, distributed_executor_backend="mp")
    opts = s.serve_options()
    assert opts["placement_group_bundles"] == [{"CPU": 1.0, "GPU": 2.0}]
    assert opts["ray_actor_options"]["num_gpus"] == 2.0
    assert not s.workers_are_actors


def test_single_gpu_replica_holds_its_gpu() -> None:
    opts = spec().serve_options()
    assert opts["placement_group_bundles"] == [{"CPU": 1.0, "GPU": 1.0}]
    assert opts["ray_actor_options"]["num_gpus"] == 1.0


def test_cpu_specs() -> None:
    one = spec(gpus_per_worker=0)
    assert "placement_group_bundles" not in one.serve_options()
    assert one.serve_options()["ray_actor_options"]["num_gpus"] == 0
    tp2 = spec(gpus_per_worker=0, tensor_parallel_size=2, cpus_per_worker=0.5)
    opts = tp2.serve_options()
    assert opts["placement_group_bundles"] == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert tp2.executor_backend == "mp"


@pytest.mark.parametrize(
    "bad",
    [
        {"gpus_per_worker": 2, "tensor_parallel_size": 2},  # vLLM: no bundle with more than one GPU
        {"gpus_per_worker": 0.5, "tensor_parallel_size": 2},  # ray workers ask 1 GPU of a 0.5 bundle
        {"gpus_per_worker": 0.5, "tensor_parallel_size": 2, "distributed_executor_backend": "mp"},
        {"gpus_per_worker": 0, "pipeline_parallel_size": 2, "enforce_eager": True},  # fails at step 1
    ],
)
def test_specs_vllm_cannot_run_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        spec(**bad)


def test_env_vars_layering() -> None:
    s = spec(gpus_per_worker=0, env_vars={"VLLM_CPU_KVCACHE_SPACE": "4"}, deployment={"env_vars": {"A": "1"}})
    env = s.serve_options()["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == {
        **WORKER_ENV,
        "A": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    assert env == s.engine_env()  # what build_llm_classifier sets while the engine starts


def test_hf_hub_offline_false_sets_zero() -> None:
    """``hf_hub_offline: false`` must reach the replica as ``0``: leaving the variable out let
    ``WORKER_ENV``'s ``1`` stand (and a node's own ``1``)."""
    assert spec(hf_hub_offline=False).engine_env()["HF_HUB_OFFLINE"] == "0"
    assert spec().engine_env()["HF_HUB_OFFLINE"] == "1"


def test_defaults_lose_to_the_deployments_env_vars_which_lose_to_the_specs() -> None:
    s = spec(
        gpus_per_worker=0,
        deployment={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "8", "HF_HUB_OFFLINE": "0", "B": "dep"}},
        env_vars={"B": "spec"},
    )
    env = s.engine_env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "8" and env["HF_HUB_OFFLINE"] == "0"  # over the defaults
    assert env["B"] == "spec"  # the spec's own env_vars over the deployment's
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["TOKENIZERS_PARALLELISM"] == "false"


def test_a_partial_deployment_keeps_the_llm_defaults() -> None:
    """The sweep writes ``deployment: {num_replicas: N}``: that must not drop the LLM's 1 CPU and 256
    requests in flight for DeploymentOptions' 0.25 and 32."""
    d = spec(deployment={"num_replicas": 2}).deployment
    assert (d.num_replicas, d.num_cpus, d.max_ongoing_requests) == (2, 1.0, 256)
    assert spec().deployment == spec(deployment={}).deployment
    assert spec(deployment={"max_ongoing_requests": 64}).deployment.num_cpus == 1.0
    assert spec(deployment={"num_cpus": 0.5}).deployment.max_ongoing_requests == 256


def test_custom_resources_go_into_the_replica_bundle() -> None:
    s = spec(tensor_parallel_size=2, deployment={"resources": {"node:w1": 0.01}})
    # the LLM's 1 CPU stays under a deployment mapping that sets resources only
    assert s.serve_options()["placement_group_bundles"][0] == {"CPU": 1.0, "node:w1": 0.01}
    assert s.serve_options()["ray_actor_options"]["resources"] == {"node:w1": 0.01}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"labels": []}, "at least 1"),
        ({"labels": ["a", "a"]}, "unique"),
        ({"labels": ["a", " b"]}, "whitespace"),
        ({"labels": ["a", ""]}, "non-empty"),
        ({"label_bias": {"c": 1.0}}, "not in labels"),
        ({"engine_kwargs": {"tensor_parallel_size": 2}}, "typed fields"),
        ({"deployment": {"num_gpus": 1}}, "gpus_per_worker"),
        ({"tensor_parallel_size": 2, "distributed_executor_backend": "uni"}, "uni"),
        ({"gpus_per_worker": 0, "distributed_executor_backend": "ray"}, "refuses the ray executor"),
        ({"gpus_per_worker": 0, "distributed_executor_backend": "uni"}, "turns uni into mp"),
        ({"pipeline_spans_nodes": True}, "pipeline_parallel_size >= 2"),
        (
            {
                "gpus_per_worker": 0,
                "pipeline_parallel_size": 2,
                "pipeline_spans_nodes": True,
                "placement_strategy": "PACK",
            },
            "STRICT_SPREAD",
        ),
        ({"gpus_per_worker": 0, "remote_stage_env": {"A": "1"}}, "remote_stage_env"),
        ({"tensor_parallel_size": 2, "placement_strategy": "STRICT_SPREAD"}, "STRICT_SPREAD"),
        (
            {"pipeline_parallel_size": 2, "pipeline_spans_nodes": True, "placement_strategy": "STRICT_PACK"},
            "STRICT_PACK",
        ),
        ({"tensor_parallel_size": 2, "deployment": {"num_cpus": 0}}, "num_cpus"),
        (
            {"pipeline_parallel_size": 2, "pipeline_spans_nodes": True, "distributed_executor_backend": "mp"},
            "need the ray executor",
        ),
        ({"engine_kwargs": {"worker_extension_cls": "x.Y"}}, "worker_extension_cls is taken"),
        ({"default_mode": "fast"}, "default_mode"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"id": "Bad Id"}, "id"),
    ],
)
def test_invalid_specs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**kw)


def test_defaults() -> None:
    s = spec()
    assert s.energy.attribution == "tokens"
    assert spec(energy={"meter": "estimate"}).energy.attribution == "tokens"
    assert spec(energy={"attribution": "texts"}).energy.attribution == "texts"
    assert s.default_mode == "choice"
    assert s.world_size == 1 and s.executor_backend is None


def test_cpu_pipeline_across_nodes_is_one_bundle_per_stage_strictly_spread() -> None:
    """vLLM for CPU across nodes: the mp executor's multi-node mode, stage 0 in the replica's bundle,
    each further stage an actor in a bundle of its own, every bundle on another node."""
    spec = LLMSpec.model_validate(
        {
            "id": "pp",
            "model": "m",
            "labels": ["a", "b"],
            "gpus_per_worker": 0,
            "pipeline_parallel_size": 2,
            "pipeline_spans_nodes": True,
            "cpus_per_worker": 0.5,
            "deployment": {"num_cpus": 0.5},
            "remote_stage_env": {"VLLM_CPU_OMP_THREADS_BIND": "1"},
        }
    )
    assert (spec.executor_backend, spec.stage_nodes, spec.workers_are_actors) == ("mp", 2, False)
    opts = spec.serve_options()
    assert opts["placement_group_bundles"] == [{"CPU": 1.0}, {"CPU": 0.5}]
    assert opts["placement_group_strategy"] == "STRICT_SPREAD"
    assert opts["ray_actor_options"]["num_gpus"] == 0
    assert opts["ray_actor_options"]["num_cpus"] == 1.0  # the replica holds stage 0's rank (its child)
    gpu = LLMSpec.model_validate(
        {"id": "g", "model": "m", "labels": ["a"], "pipeline_parallel_size": 2, "pipeline_spans_nodes": True}
    )
    assert (gpu.executor_backend, gpu.stage_nodes) == ("ray", 1)  # GPUs: the Ray executor places stages
