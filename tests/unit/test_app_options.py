"""The Serve options `build_app` gives each deployment: the replicas whose request code never blocks its
event loop (router, traditional classifiers) run it on Serve's own loop (``env.SERVE_REPLICA_ENV``); an
LLM replica, whose engine start blocks its constructor, keeps Serve's defaults; a deployment's or the
router's ``env_vars`` win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from serve_app.app import _serve_options, build_app
from serve_app.config import AppConfig
from serve_app.env import NO_GPU_ENV, SERVE_REPLICA_ENV, WORKER_ENV
from serve_app.sweep.config import SweepFile, classifier_specs
from tests.conftest import REPO

pytestmark = pytest.mark.unit
SEPARATE = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"


def env_of(options: dict[str, Any]) -> dict[str, str]:
    return dict(options["ray_actor_options"]["runtime_env"]["env_vars"])


def spec(kind: str, **kw: Any) -> Any:
    base: dict[str, Any] = {"kind": kind, "id": "m"}
    if kind == "llm":
        base.update(model="/models/m", labels=["a", "b"])
    base.update(kw)
    return AppConfig.model_validate({"classifiers": [base]}).classifiers[0]


def test_traditional_replicas_run_on_serves_loop() -> None:
    env = env_of(_serve_options(spec("traditional", id="tfidf-logreg")))
    assert env == {**WORKER_ENV, **SERVE_REPLICA_ENV, **NO_GPU_ENV}  # no GPU reserved: none in view
    assert env[SEPARATE] == "0"


def test_a_traditional_replica_that_reserves_a_gpu_keeps_it_in_view() -> None:
    """Only a replica that asks for no GPU has them hidden; one that reserves one gets Ray's own
    ``CUDA_VISIBLE_DEVICES`` (the GPU it was given)."""
    env = env_of(_serve_options(spec("traditional", id="embedding-logreg", deployment={"num_gpus": 1})))
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_llm_replicas_keep_serves_defaults() -> None:
    env = env_of(_serve_options(spec("llm")))
    assert not set(SERVE_REPLICA_ENV) & set(env)


def test_a_deployments_env_vars_win() -> None:
    s = spec("traditional", id="tfidf-logreg", deployment={"env_vars": {SEPARATE: "1"}})
    assert env_of(_serve_options(s))[SEPARATE] == "1"


@pytest.mark.parametrize("override", [{}, {SEPARATE: "1"}])
def test_router_gets_the_settings_and_its_env_vars_win(override: dict[str, str], tmp_path: Path) -> None:
    app: Any = build_app(
        {
            "artifacts_dir": str(tmp_path),
            "train_if_missing": {"n_train": 60, "n_test": 10},
            "router": {"env_vars": override, "resources": {"node:head": 0.01}},
            "classifiers": [{"kind": "traditional", "id": "tfidf-logreg"}],
        }
    )
    router = app._bound_deployment
    env = router.ray_actor_options["runtime_env"]["env_vars"]
    assert env == {**SERVE_REPLICA_ENV, **override}
    assert router.ray_actor_options["resources"] == {"node:head": 0.01}


def test_llm_replica_env_follows_hf_hub_offline() -> None:
    """``hf_hub_offline: false`` reaches the replica as ``HF_HUB_OFFLINE=0``, not ``WORKER_ENV``'s 1."""
    assert env_of(_serve_options(spec("llm", hf_hub_offline=False)))["HF_HUB_OFFLINE"] == "0"
    assert env_of(_serve_options(spec("llm")))["HF_HUB_OFFLINE"] == "1"
    study = AppConfig.from_yaml(REPO / "deployments" / "study-h100.yaml").classifiers[0]
    assert study.kind == "llm" and not study.hf_hub_offline
    assert env_of(_serve_options(study))["HF_HUB_OFFLINE"] == "0"


def test_llm_replica_env_layers_defaults_then_deployment_then_spec() -> None:
    s = spec(
        "llm",
        gpus_per_worker=0,
        deployment={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "8", "HF_HUB_OFFLINE": "0", "B": "dep"}},
        env_vars={"B": "spec"},
    )
    env = env_of(_serve_options(s))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "8" and env["HF_HUB_OFFLINE"] == "0"
    assert env["B"] == "spec" and env["TOKENIZERS_PARALLELISM"] == "false"
    assert env == s.engine_env()


def test_the_gpu_sweeps_llms_keep_their_deployment_defaults() -> None:
    """The sweep passes ``deployment: {num_replicas: N}``; the LLMs keep 1 CPU and 256 in flight."""
    sweep = SweepFile.model_validate(
        yaml.safe_load((REPO / "cluster/topologies/study-gpus.yaml").read_text())
    )
    specs = classifier_specs(sweep, sweep.topologies[0])
    llms = [c for c in AppConfig.model_validate({"classifiers": specs}).classifiers if c.kind == "llm"]
    assert llms
    for s in llms:
        opts = _serve_options(s)
        assert opts["max_ongoing_requests"] == 256
        assert opts["ray_actor_options"]["num_cpus"] >= 1.0


def test_a_partial_pipeline_deployment_keeps_its_cpu() -> None:
    s = spec("pipeline", id="p", model="tfidf-logreg", deployment={"num_replicas": 2})
    assert (s.deployment.num_replicas, s.deployment.num_cpus) == (2, 1.0)
    assert _serve_options(s)["placement_group_bundles"][0] == {"CPU": 1.0}


def test_a_pipeline_asking_for_gpus_is_refused() -> None:
    """Serve refuses an actor that asks for more than its placement group's first bundle (the
    replica's, which holds no GPU): the config says so instead."""
    with pytest.raises(ValidationError, match="num_gpus must be 0 for a pipeline"):
        spec("pipeline", id="p", model="tfidf-logreg", deployment={"num_gpus": 1})
