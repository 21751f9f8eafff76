"""Configuration of a traditional model served as two stages (``classifiers/pipeline.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from serve_app.config_common import DeploymentOptions, EnergyConfig, Strict

PipelineStrategy = Literal["STRICT_SPREAD", "SPREAD", "PACK"]


class PipelineSpec(Strict):
    """A traditional model served as two stages on (by default) two different nodes."""

    kind: Literal["pipeline"] = "pipeline"
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    model: str = Field(pattern=r"^(bow|tfidf|embedding)-(logreg|xgboost)$")
    """The trained artifact under ``artifacts_dir`` (as ``accuwatt train`` writes it)."""
    deployment: DeploymentOptions = DeploymentOptions(num_cpus=1.0)
    """``num_cpus`` >= 1 while ``app._serve_options`` drops the actor's own CPUs (Serve then asks 1)."""
    energy: EnergyConfig = EnergyConfig()
    feature_cpus: float = Field(0.25, gt=0)
    """Logical CPUs of the feature stage's bundle."""
    feature_resources: dict[str, float] = Field(default_factory=dict)
    """Extra custom resources of the feature stage's bundle, e.g. ``{"node:worker-1": 0.01}``."""
    placement_strategy: PipelineStrategy = "STRICT_SPREAD"
    """``STRICT_SPREAD``: the two stages on two different nodes (the experiment); ``PACK``: same node
    where possible (the single-node baseline of the same code path)."""

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
