"""Configuration of a traditional model served as two stages (``classifiers/pipeline.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from serve_app.config_common import (
    DeploymentOptions,
    EnergyConfig,
    Strict,
    deployment_id,
    over_defaults,
    ray_quantity,
    ray_resources,
)

PipelineStrategy = Literal["STRICT_SPREAD", "SPREAD", "PACK"]
PIPELINE_DEPLOYMENT: dict[str, Any] = {"num_cpus": 1.0}
"""A pipeline's ``deployment`` defaults where they differ from `DeploymentOptions`' (kept under a
partial ``deployment`` mapping)."""


class PipelineSpec(Strict):
    """A traditional model served as two stages on (by default) two different nodes."""

    kind: Literal["pipeline"] = "pipeline"
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    model: str = Field(pattern=r"^(bow|tfidf|embedding)-(logreg|xgboost)$")
    """The trained artifact under ``artifacts_dir`` (as ``accuwatt train`` writes it)."""
    deployment: DeploymentOptions = DeploymentOptions.model_validate(PIPELINE_DEPLOYMENT)
    """The replica (the classification head), in the first bundle of its placement group, which holds
    ``num_cpus`` (1 by default, also under a mapping that sets other fields only) and ``resources``.
    No GPUs: ``num_gpus`` must be 0 (the bundle has none, and Serve refuses an actor that asks for more
    than its first bundle holds)."""
    energy: EnergyConfig = EnergyConfig()
    feature_cpus: float = Field(0.25, gt=0)
    """Logical CPUs of the feature stage's bundle."""
    feature_resources: dict[str, float] = Field(default_factory=dict)
    """Extra custom resources of the feature stage's bundle, e.g. ``{"node:worker-1": 0.01}``."""
    placement_strategy: PipelineStrategy = "STRICT_SPREAD"
    """``STRICT_SPREAD``: the two stages on two different nodes (the experiment); ``PACK``: same node
    where possible (the single-node baseline of the same code path)."""

    @field_validator("id")
    @classmethod
    def _deployment_id(cls, value: str) -> str:
        return deployment_id(value)

    @field_validator("feature_cpus")
    @classmethod
    def _ray_quantity(cls, value: float) -> float:
        """A quantity Ray schedules: one finer than its resource unit passed ``gt=0`` and failed only
        when the replica started the stage actor."""
        return ray_quantity("feature_cpus", value)

    @field_validator("feature_resources")
    @classmethod
    def _ray_resources(cls, value: dict[str, float]) -> dict[str, float]:
        """Quantities Ray accepts, and no ``CPU``/``GPU`` (``{"CPU": 1}`` silently replaced
        ``feature_cpus``; a negative one was silently left out)."""
        return ray_resources(value, "feature_cpus (a feature stage has no GPU)")

    @field_validator("deployment", mode="before")
    @classmethod
    def _deployment_defaults(cls, value: Any) -> Any:
        """A ``deployment`` mapping keeps the pipeline defaults it does not set (`PIPELINE_DEPLOYMENT`)."""
        return over_defaults(value, PIPELINE_DEPLOYMENT)

    @field_validator("deployment")
    @classmethod
    def _no_gpus(cls, value: DeploymentOptions) -> DeploymentOptions:
        if value.num_gpus:
            raise ValueError(
                "num_gpus must be 0 for a pipeline: the replica's placement bundle holds no GPU, and "
                "Serve refuses an actor that asks for more than its first bundle holds"
            )
        return value

    def placement(self) -> tuple[list[dict[str, float]], str]:
        replica = {"CPU": self.deployment.num_cpus, **self.deployment.resources}
        stage = {"CPU": self.feature_cpus, **self.feature_resources}
        bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.01} for b in (replica, stage)]
        return bundles, self.placement_strategy

    def serve_options(self) -> dict[str, Any]:
        """Deployment options beyond ``deployment``: the replica's placement group."""
        bundles, strategy = self.placement()
        return {"placement_group_bundles": bundles, "placement_group_strategy": strategy}

    @property
    def artifact(self) -> str:
        """The trained model this spec serves (``accuwatt train`` writes it)."""
        return self.model
