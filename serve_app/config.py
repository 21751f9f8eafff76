"""Typed configuration, validated once. Serve config files pass these as the builder's ``args``.

Configs hold data only; factories elsewhere build meters, models and handles from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from serve_app.classifiers.llm_config import LLMSpec
from serve_app.classifiers.pipeline_config import PipelineSpec
from serve_app.config_common import (
    DeploymentOptions,
    EnergyConfig,
    RayQuantity,
    RayResources,
    Strict,
    require_unique,
)
from serve_app.env import NO_GPU_ENV, SERVE_REPLICA_ENV


class TraditionalSpec(Strict):
    """A trained scikit-learn / XGBoost model, saved by ``accuwatt train`` under ``artifacts_dir``."""

    kind: Literal["traditional"] = "traditional"
    id: str = Field(pattern=r"^(bow|tfidf|embedding)-(logreg|xgboost)$")
    deployment: DeploymentOptions = DeploymentOptions()
    energy: EnergyConfig = EnergyConfig()

    @property
    def artifact(self) -> str:
        """The trained model this spec serves: its own id."""
        return self.id

    def serve_options(self) -> dict[str, Any]:
        """Beyond ``deployment``: the replica runs its request code on Serve's own event loop
        (``env.SERVE_REPLICA_ENV``); a replica that reserves no GPU sees none (``NO_GPU_ENV``: Ray 2.60
        leaves an actor that asks for none every GPU of its node, and an embedding replica's encoder
        took one, unreserved and unmetered by its share). The deployment's ``env_vars`` win."""
        no_gpu = NO_GPU_ENV if not self.deployment.num_gpus else {}
        env = {**SERVE_REPLICA_ENV, **no_gpu, **self.deployment.env_vars}
        return {"ray_actor_options": {"runtime_env": {"env_vars": env}}}


ClassifierSpec = Annotated[TraditionalSpec | LLMSpec | PipelineSpec, Field(discriminator="kind")]


class TrainIfMissing(Strict):
    """Train the traditional models named by the app when their artifacts are missing or were trained
    on another split, label set or encoder than these fields name."""

    dataset: str = "demo"
    """A dataset path, a Hugging Face id, or ``demo`` (the bundled GermEval 2018 sample)."""
    n_train: int = Field(200, ge=2)
    n_test: int = Field(200, ge=1)
    seed: int = 20250101
    split_index: int = Field(0, ge=0)
    embedding_model: str = "packaged:all-MiniLM-L6-v2"


class RouterConfig(Strict):
    """Limits and access of the HTTP ingress."""

    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_texts: int = Field(256, ge=1)
    max_text_chars: int = Field(20_000, ge=1)
    api_key_env: str = "ACCUWATT_API_KEY"
    """Name of the environment variable (in the router's process) holding the bearer token."""
    api_key_file: str | None = None
    """Path of a file holding the bearer token (a mounted secret), read by the router at start; it wins
    over ``api_key_env``. A configured file that is missing or empty stops the router from starting;
an empty or blank path is refused here (never read as "no file").
    No key at all (no file, variable unset or empty) is allowed only while Serve's ``http_options.host``
    is loopback; otherwise the router refuses to start. Never put the token itself in a config."""
    body_timeout_s: float = Field(10.0, gt=0)
    """A request body must arrive within this time (slow or lying clients get 408)."""
    max_inflight: int = Field(256, ge=1)
    """Classify requests the router handles at once, counting idempotent classifications that go on after
    their clients went away; more get 503 ``overloaded`` before their body is read (keeps the router's
    memory bounded: about ``max_inflight`` x ``max_body_bytes``)."""
    request_timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(1, ge=0, le=3)
    """Idempotent classification is retried this often when a replica dies mid-request."""
    num_cpus: RayQuantity = 0.25
    """Logical CPUs of the router's replica (two-hop layout; ``single_hop`` takes the classifier's
    ``deployment`` and refuses this)."""
    resources: RayResources = Field(default_factory=dict)
    """Custom Ray resources of the router's replicas (two-hop layout; ``single_hop`` refuses them), e.g.
    ``{"node:head": 0.01}`` to keep the router beside Serve's HTTP proxy on a multi-node cluster: then
    the serving overhead is drawn, and metered, on one node (otherwise Ray may place it on any node)."""
    max_ongoing_requests: int = Field(512, ge=1)
    """Requests in the router's replica at once (two-hop layout; ``single_hop`` refuses it)."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Environment of the router's replicas (two-hop layout, where they start with
    ``env.SERVE_REPLICA_ENV``, which these override; ``single_hop`` refuses them)."""
    layout: Literal["two_hop", "single_hop"] = "two_hop"
    """``two_hop`` (default): the router is one deployment and each classifier another (proxy -> router
    -> classifier replica). ``single_hop``: one traditional classifier runs inside the router's replica
    (proxy -> router), which saves a Serve hop per request; the router's checks are the same. The
    replica then takes the classifier's ``deployment`` options (replicas, CPUs, resources, env_vars,
    max_ongoing_requests; the router's own are refused), and its energy tag
    covers the one process and the proxy's part as a whole (``model_j`` and ``overhead_j`` stay empty,
    see ``energy/tag.py: single_hop_tag``)."""

    @field_validator("api_key_file")
    @classmethod
    def _key_file_named(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("is empty: name the file that holds the API key, or leave the setting out")
        return v


ROUTER_DEPLOYMENT = "router"
"""The router's Serve deployment name (``router.Router``; ``energy.procs.ROUTER_DEPLOYMENTS`` groups its
processes as serving overhead by it): no classifier deployment may take it."""

SINGLE_HOP_FROM_CLASSIFIER = ("num_cpus", "max_ongoing_requests", "resources", "env_vars")
"""Router settings of the two-hop layout that ``single_hop`` takes from ``classifiers[0].deployment``
instead (``app.build_app``): set in ``router``, they are refused rather than ignored."""


class AppConfig(Strict):
    """Everything ``serve_app.app:build_app`` needs. A Serve config's ``args`` is this, or
    ``{"config_file": "<path to a YAML of this>"}``."""

    classifiers: list[ClassifierSpec] = Field(min_length=1)
    artifacts_dir: str = "artifacts/demo"
    train_if_missing: TrainIfMissing | None = None
    router: RouterConfig = RouterConfig()

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [c.id for c in self.classifiers]
        require_unique("classifier ids", ids)
        if ROUTER_DEPLOYMENT in ids:
            raise ValueError(
                f"classifier id {ROUTER_DEPLOYMENT!r} is the router's deployment name (Serve would rename "
                "one of the two, and node accounts would count that classifier's energy as the router's "
                "serving overhead): choose another id"
            )
        return self

    @model_validator(mode="after")
    def _single_hop_fits(self) -> AppConfig:
        if self.router.layout != "single_hop":
            return self
        if len(self.classifiers) != 1 or self.classifiers[0].kind != "traditional":
            kinds = [f"{c.id} ({c.kind})" for c in self.classifiers]
            raise ValueError(
                "router.layout single_hop serves exactly one traditional classifier inside the router's "
                f"replica; this config has {kinds}: use layout two_hop (the default), or one app per model"
            )
        fields = RouterConfig.model_fields
        ignored = [
            name
            for name in SINGLE_HOP_FROM_CLASSIFIER
            if getattr(self.router, name) != fields[name].get_default(call_default_factory=True)
        ]
        if ignored:
            names = ", ".join(f"router.{n}" for n in ignored)
            raise ValueError(
                f"{names} would be ignored with router.layout single_hop: the router's replicas are the "
                f"classifier's, and take classifiers[0].deployment ({', '.join(SINGLE_HOP_FROM_CLASSIFIER)} "
                "are set there)"
            )
        return self

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AppConfig:
        if set(args) == {"config_file"}:
            return cls.from_yaml(args["config_file"])
        return cls.model_validate(args)

    @classmethod
    def from_yaml(cls, path: str | Path) -> AppConfig:
        """An AppConfig YAML, or a whole Serve config (its first application's ``args``). A file that is
        neither (empty, a list, an application without ``args``) is a `ValueError` naming it; its
        ``args`` are the config itself (not another ``config_file``)."""
        data = yaml.safe_load(Path(path).read_text())
        if isinstance(data, dict) and "applications" in data:  # a whole Serve config file
            apps = data["applications"]
            first = apps[0] if isinstance(apps, list) and apps else None
            if not (isinstance(first, dict) and isinstance(first.get("args"), dict)):
                raise ValueError(f"{path}: a Serve config whose first application has no args mapping")
            data = first["args"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not an AppConfig (a mapping) or a Serve config with its args")
        return cls.model_validate(data)
