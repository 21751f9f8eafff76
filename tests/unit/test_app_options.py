"""The Serve options `build_app` gives each deployment: the replicas whose request code never blocks its
event loop (router, traditional classifiers) run it on Serve's own loop (``env.SERVE_REPLICA_ENV``); an
LLM replica, whose engine start blocks its constructor, keeps Serve's defaults; a deployment's or the
router's ``env_vars`` win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve_app.app import _serve_options, build_app
from serve_app.config import AppConfig
from serve_app.env import SERVE_REPLICA_ENV, WORKER_ENV

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
    assert env == {**WORKER_ENV, **SERVE_REPLICA_ENV}
    assert env[SEPARATE] == "0"


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
