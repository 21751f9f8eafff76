"""A traditional model split across nodes: the feature stage on one node, the head on another.

This is the CPU stand-in for the study's multi-node serving (vLLM pipeline parallelism across nodes
needs GPUs or a heavy CPU setup): one replica, one placement group with ``STRICT_SPREAD`` bundles,

- bundle 0: the replica itself (the classification head: logistic regression / XGBoost), and
- bundle 1: a :class:`FeatureStage` actor (bag of words, char TF-IDF, or the sentence-embedding
  encoder) on another node, which the replica calls for every batch.

The classifier reports the stage's process (:meth:`PipelineClassifier.workers`); the
deployment meters it with the replica: through the other node's energy agent when the stages are
spread (a ``MultiNodeMeter``; every request's tag holds both nodes' energy), or in the replica's own
estimate when they are packed on one node (the stage is a Ray actor there, not the replica's child).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from serve_app.classifiers import embedding
from serve_app.classifiers.base import Classifier, ClassifierInfo, WorkSink
from serve_app.classifiers.pipeline_config import PipelineSpec
from serve_app.classifiers.traditional import (
    artifact_details,
    padded_predictions,
    read_manifest,
    trainable_parameters,
)
from serve_app.energy.keys import WorkerProcess
from serve_app.env import NO_GPU_ENV, WORKER_ENV
from serve_app.topology.nodes import current_node_id, current_node_name
from serve_app.wire import Prediction

STAGE_READY_TIMEOUT_S = 300.0
STAGE_HEALTH_TIMEOUT_S = 10.0
"""Longest wait for the feature stage's answer in a health check (s; Serve's own timeout is longer)."""
HEALTH_GROUP = "health"
"""The stage actor's concurrency group for health checks (one thread beside the batches' own)."""


class FeatureStageImpl:
    """The first stage: loads the artifact's feature extractor and turns texts into features."""

    def __init__(self, artifact_dir: str) -> None:
        import joblib

        self.model = joblib.load(Path(artifact_dir) / "model.joblib")
        if self.model.embedding_model:
            embedding.load_encoder(self.model.embedding_model)

    def where(self) -> dict[str, Any]:

        return {"node_id": current_node_id() or "", "node": current_node_name(), "pid": os.getpid()}

    def features(self, texts: list[str]) -> Any:
        return self.model.features(texts)


class PipelineClassifier(Classifier):
    """The head stage (in the replica); the server batches requests into one stage call."""

    batched = True

    def __init__(self, spec: PipelineSpec, artifacts_dir: Path) -> None:
        import joblib
        import ray
        from ray.util import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        art = Path(artifacts_dir) / spec.model
        self.manifest = read_manifest(art)
        self.model = joblib.load(art / "model.joblib")
        pg = get_current_placement_group()
        options: dict[str, Any] = {"num_cpus": spec.feature_cpus}
        if pg is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=1
            )
        else:
            options["resources"] = dict(spec.feature_resources)
        env = {**WORKER_ENV, **NO_GPU_ENV, **spec.deployment.env_vars}
        # `where` answers health checks from a thread of its own: in the default group (one thread) it
        # would wait behind every queued `features` call, and a busy stage would fail its check
        remote: Any = ray.remote  # its typed overloads do not name concurrency_groups
        stage_cls: Any = remote(concurrency_groups={HEALTH_GROUP: 1})(FeatureStageImpl)
        self.stage: Any = stage_cls.options(runtime_env={"env_vars": env}, **options).remote(str(art))
        self.stage_where: dict[str, Any] = ray.get(self.stage.where.remote(), timeout=STAGE_READY_TIMEOUT_S)
        self.head_node = current_node_name()
        super().__init__(
            ClassifierInfo(
                model_id=spec.id,
                kind="traditional",
                labels=tuple(self.manifest["labels"]),
                devices=("cpu",),
                parameters=self.manifest.get("parameters"),
                trainable_parameters=trainable_parameters(self.manifest, self.model),
                details={
                    "model": spec.model,
                    "topology": "pipeline",
                    "placement_strategy": spec.placement_strategy,
                    "stages": {"features": self.stage_where["node"], "head": self.head_node},
                    "feature_pid": int(self.stage_where["pid"]),
                    **artifact_details(self.manifest, self.model),
                },
            )
        )

    async def workers(self) -> list[WorkerProcess]:
        """The feature stage's process, for the replica's meter (see the module doc)."""
        w = self.stage_where
        return [WorkerProcess(int(w["pid"]), str(w["node_id"]) or None, (), "feature-stage")]

    async def predict(
        self, texts: list[str], mode: str | None = None, on_work: WorkSink | None = None
    ) -> list[Prediction]:
        import numpy as np

        if not texts:  # the estimators refuse a matrix of no rows
            return []
        x = await self.stage.features.remote(list(texts))
        # the head in a worker thread, as a traditional replica's model: the replica's loop stays free
        proba = np.asarray(await asyncio.to_thread(self.model.estimator.predict_proba, x))
        return padded_predictions(self.info.labels, self.model.classes, proba)

    async def check_health(self) -> None:
        """The feature stage answers (in its own concurrency group, not behind queued batches): a dead
        stage actor raises (``RayActorError``), one that does not answer in time ``TimeoutError``."""
        ping = self.stage.where.options(concurrency_group=HEALTH_GROUP).remote()
        await asyncio.wait_for(ping, STAGE_HEALTH_TIMEOUT_S)

    def close(self) -> None:
        import ray

        ray.kill(self.stage)
