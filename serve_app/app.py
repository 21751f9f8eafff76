"""The builder a Serve config names (``import_path: serve_app.app:build_app``).

``serve run deployments/local.yaml`` and Python (``serve.run(build_app(cfg))``) call the same function:
it validates the config once, trains missing traditional models when the config asks for it,
and binds one `ClassifierServer` deployment per classifier behind the `Router` (two hops), or, with
``router.layout: single_hop``, the one classifier inside the router's replicas.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.serve import Application

from serve_app.classifiers.traditional import ArtifactError
from serve_app.config import AppConfig, ClassifierSpec
from serve_app.config_common import EnergyConfig
from serve_app.data import load_dataset, make_split
from serve_app.deployment import ClassifierServer
from serve_app.env import SERVE_REPLICA_ENV, WORKER_ENV
from serve_app.router import Router
from serve_app.train import train_missing, untrained

log = logging.getLogger("accuwatt.app")
ROUTER_START_ATTEMPTS = 3
"""A router that refuses to start (access settings, see ``router.AccessError``) fails the deployment
after this many tries instead of Serve's default 20: the cause does not go away by retrying."""


def ensure_artifacts(cfg: AppConfig) -> Path:
    """Resolve ``artifacts_dir`` (absolute, so replicas find it). With ``train_if_missing``, train what
    is missing or was trained on another split, label set or encoder than it names (as replay and
    sweep do); without it, refuse models that are not trained."""

    root = Path(cfg.artifacts_dir).expanduser().resolve()
    wanted = sorted({c.artifact for c in cfg.classifiers if c.artifact is not None})
    t = cfg.train_if_missing
    if t is None:
        missing = untrained(wanted, root)
        if missing:
            raise ArtifactError(
                f"models {missing} are not trained under {root}; run `accuwatt train` "
                "or set train_if_missing in the config"
            )
        return root
    if wanted:
        ds = load_dataset(t.dataset)
        split = make_split(ds, t.n_train, t.n_test, t.seed, t.split_index)
        trained = train_missing(split, wanted, root, ds, t.embedding_model)
        if trained:
            log.info("trained %s on %s (split %d) into %s", trained, ds.name, t.split_index, root)
    return root


def _serve_options(spec: ClassifierSpec) -> dict[str, Any]:
    d = spec.deployment
    opts: dict[str, Any] = {
        "name": spec.id,
        "num_replicas": d.num_replicas,
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
        "ray_actor_options": {
            "num_cpus": d.num_cpus,
            "num_gpus": d.num_gpus,
            "resources": dict(d.resources),
            "runtime_env": {"env_vars": {**WORKER_ENV, **d.env_vars}},
        },
    }
    extra = spec.serve_options()
    actor_extra = extra.pop("ray_actor_options", {})
    opts["ray_actor_options"].update({k: v for k, v in actor_extra.items() if k != "runtime_env"})
    env = actor_extra.get("runtime_env", {}).get("env_vars", {})
    opts["ray_actor_options"]["runtime_env"]["env_vars"].update(env)
    opts.update(extra)
    return opts


def build_app(args: dict[str, Any]) -> Application:
    cfg = AppConfig.from_args(args)
    artifacts = str(ensure_artifacts(cfg))
    router: Any = Router  # a serve.Deployment at run time
    energy = overhead_energy(cfg).model_dump()
    if cfg.router.layout == "single_hop":  # the one classifier inside the router's replicas
        spec = cfg.classifiers[0]
        ingress = router.options(
            **{**_serve_options(spec), "name": "router"}, max_constructor_retry_count=ROUTER_START_ATTEMPTS
        )
        local = {"spec": spec.model_dump(), "artifacts_dir": artifacts}
        return ingress.bind({}, cfg.router.model_dump(), energy, local)
    server: Any = ClassifierServer
    handles = {
        spec.id: server.options(**_serve_options(spec)).bind(spec.model_dump(), artifacts)
        for spec in cfg.classifiers
    }
    ingress = router.options(
        num_replicas=1,
        max_ongoing_requests=cfg.router.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": cfg.router.num_cpus,
            "resources": dict(cfg.router.resources),
            "runtime_env": {"env_vars": {**SERVE_REPLICA_ENV, **cfg.router.env_vars}},
        },
        max_constructor_retry_count=ROUTER_START_ATTEMPTS,
    )
    return ingress.bind(handles, cfg.router.model_dump(), energy)


def overhead_energy(cfg: AppConfig) -> EnergyConfig:
    """The energy configuration the router meters serving overhead with: the classifiers' (the first
    one's when they differ, logged: each configuration is a node account of its own). ``attribution``
    is left out of the comparison: the overhead splits by ``time`` whatever it says (``ServingOverhead``),
    and LLMs default to ``tokens`` where the other kinds default to ``texts``."""
    configs = [c.energy.model_copy(update={"attribution": "time"}) for c in cfg.classifiers]
    if any(c != configs[0] for c in configs[1:]):
        log.warning(
            "classifiers differ in energy configuration; serving overhead uses %s's", cfg.classifiers[0].id
        )
    return cfg.classifiers[0].energy
