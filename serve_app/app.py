"""The builder a Serve config names (``import_path: serve_app.app:build_app``).

``serve run deployments/local.yaml`` and Python (``serve.run(build_app(cfg))``) call the same function:
it validates the config once, trains missing traditional models when the config asks for it,
and binds one `ClassifierServer` deployment per classifier behind the `Router` (two hops), or, with
``router.layout: single_hop``, the one classifier inside the router's replicas.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ray.serve import Application

from serve_app.classifiers.llm_config import LLMSpec
from serve_app.classifiers.traditional import ArtifactError
from serve_app.config import AppConfig, ClassifierSpec
from serve_app.config_common import BatchingOptions, EnergyConfig
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
        "user_config": d.batching.model_dump(),  # the replica's `reconfigure` applies it
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


IN_PLACE_OPTIONS = (
    "num_replicas",
    "max_ongoing_requests",
    "max_queued_requests",
    "health_check_period_s",
    "health_check_timeout_s",
    *BatchingOptions.model_fields,
)
"""`DeploymentOptions` that Serve changes on the running replicas (a light-weight update: more or fewer
replicas, new limits, health check timing, new batching): they reach Serve as deployment options only,
never in a constructor's arguments (`replica_spec`), so changing one keeps the replicas. The batching
ones (``max_batch_size``, ``batch_wait_timeout_s``) are the deployment's ``user_config``: Serve hands
them to the replicas' ``reconfigure`` after the constructor and on every change. The other fields
(CPUs, GPUs, resources, env_vars: Ray actor options) restart them."""


def replica_spec(spec: ClassifierSpec) -> dict[str, Any]:
    """The spec a replica is built from: ``spec`` without `IN_PLACE_OPTIONS` (its copy holds their
    defaults; Serve holds the deployed values, and hands the batching ones to ``reconfigure`` before
    the replica serves)."""
    dumped = spec.model_dump()
    dumped["deployment"] = {k: v for k, v in dumped["deployment"].items() if k not in IN_PLACE_OPTIONS}
    return dumped


def code_digest() -> str:
    """A digest of ``serve_app``'s source: what a replica runs besides its arguments."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def files_stamp(path: str | Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of the file ``path``, or of each file under the folder
    ``path`` (empty where there is none here): files written again under the same path are a new
    version of the deployment that reads them."""
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return [(str(p.relative_to(root)), (st := p.stat()).st_size, st.st_mtime_ns) for p in files]


def model_stamp(artifacts_dir: str, spec: ClassifierSpec) -> list[Any]:
    """`files_stamp` of what ``spec``'s replica loads from disk: its trained artifact, or an LLM's
    local model folder (a hub id or a ``prepared:`` name: nothing)."""
    if spec.artifact is not None:
        return files_stamp(Path(artifacts_dir) / spec.artifact)
    return files_stamp(spec.model) if isinstance(spec, LLMSpec) else []


def versioned(deployment: Any, code: str, *inputs: Any) -> Any:
    """``deployment`` with a version of its own: a digest of the code and of everything its replicas
    are built from (``inputs``: the constructor's arguments, the model's files). Serve compares it with
    the running version: the same version with other options (`IN_PLACE_OPTIONS`) is a light-weight
    update of the running replicas; without one (Serve's default for ``serve.run`` from Python) each
    deployment gets a random version and every replica restarts. A Serve config file (``serve deploy``)
    versions every deployment by its ``args`` instead (see README, "Scaling")."""
    h = hashlib.sha256(code.encode())
    h.update(json.dumps(inputs, sort_keys=True, default=str).encode())
    # Ray 2.60 refuses `version` in the public `options()`; `_internal` is how Serve's own calls set it,
    # and it is still the replicas' code version. A Ray without it: Serve's random version (restarts).
    try:
        return deployment.options(version=h.hexdigest()[:32], _internal=True)
    except (TypeError, ValueError) as exc:
        log.warning("deployment %s unversioned (every update restarts it): %s", deployment.name, exc)
        return deployment


def build_app(args: dict[str, Any]) -> Application:
    cfg = AppConfig.from_args(args)
    artifacts = str(ensure_artifacts(cfg))
    code = code_digest()
    router: Any = Router  # a serve.Deployment at run time
    energy = overhead_energy(cfg).model_dump()
    # the router's max_ongoing_requests is a Serve option only (changed in place), as in `IN_PLACE_OPTIONS`
    router_cfg = cfg.router.model_dump(exclude={"max_ongoing_requests"})
    key_stamp = files_stamp(cfg.router.api_key_file) if cfg.router.api_key_file else []  # a new key: restart
    if cfg.router.layout == "single_hop":  # the one classifier inside the router's replicas
        spec = cfg.classifiers[0]
        ingress = router.options(
            **{**_serve_options(spec), "name": "router"}, max_constructor_retry_count=ROUTER_START_ATTEMPTS
        )
        local = {"spec": replica_spec(spec), "artifacts_dir": artifacts}
        stamp = [model_stamp(artifacts, spec), key_stamp]
        return versioned(ingress, code, router_cfg, energy, local, stamp).bind({}, router_cfg, energy, local)
    server: Any = ClassifierServer
    handles = {}
    for spec in cfg.classifiers:
        init = (replica_spec(spec), artifacts)
        deployment = versioned(
            server.options(**_serve_options(spec)), code, init, model_stamp(artifacts, spec)
        )
        handles[spec.id] = deployment.bind(*init)
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
    # the router holds a handle per classifier (by name): scaling or updating one leaves it running
    ingress = versioned(ingress, code, router_cfg, energy, sorted(handles), key_stamp)
    return ingress.bind(handles, router_cfg, energy)


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
