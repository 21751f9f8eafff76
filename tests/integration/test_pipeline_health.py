"""A pipeline classifier's health check while its feature stage is busy (real Ray, the real stage actor):
the check must not wait behind the batches queued on the stage, or Serve would replace a replica for
being busy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from serve_app.classifiers.pipeline import STAGE_HEALTH_TIMEOUT_S, PipelineClassifier
from serve_app.classifiers.pipeline_config import PipelineSpec

pytestmark = [pytest.mark.integration]


def test_a_busy_feature_stage_still_passes_its_health_check(
    ray_cluster: dict[str, Any], demo_artifacts: Path
) -> None:
    import ray

    spec = PipelineSpec.model_validate({"id": "tfidf-health", "model": "tfidf-logreg"})
    clf = PipelineClassifier(spec, demo_artifacts)
    try:
        texts = ["Die Regierung hat das Gesetz beschlossen, du Idiot. " * 40] * 200
        t0 = time.monotonic()
        ray.get(clf.stage.features.remote(texts))
        one_s = time.monotonic() - t0
        # about one and a half health-check timeouts of work queued on the stage
        backlog = [
            clf.stage.features.remote(texts) for _ in range(int(1.5 * STAGE_HEALTH_TIMEOUT_S / one_s) + 1)
        ]
        t0 = time.monotonic()
        asyncio.run(clf.check_health())  # raised TimeoutError when the ping queued behind the backlog
        took = time.monotonic() - t0
        _, pending = ray.wait(backlog, num_returns=len(backlog), timeout=0)
        assert pending, f"the backlog ({len(backlog)} x {one_s:.2f} s) ended before the check: nothing shown"
        assert took < STAGE_HEALTH_TIMEOUT_S / 2, (took, one_s, len(pending))
    finally:
        clf.close()
