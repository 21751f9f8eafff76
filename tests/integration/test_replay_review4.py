"""Review 4 of the replay driver, against the real service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serve_app.data import DEMO_DIR
from serve_app.replay.config import ReplayConfig, ReplayData, ReplayLoad, ReplayOutput
from serve_app.replay.records import read_records
from serve_app.replay.runner import replay_url
from tests.conftest import traditional_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _replay(url: str, out: Path) -> tuple[list, dict]:
    cfg = ReplayConfig(
        models=["tfidf-logreg"],
        data=ReplayData(test_file=str(DEMO_DIR / "test.jsonl")),
        load=ReplayLoad(concurrency=2),
        output=ReplayOutput(out=str(out), progress=False),
    )
    (folder,) = asyncio.run(replay_url(cfg, url))
    metrics = json.loads((folder / "metrics.json").read_text())["mean"]
    return read_records(folder / "records.jsonl"), metrics


@pytest.mark.slow
def test_a_second_run_of_the_same_command_is_classified_and_metered_again(
    tmp_path, serve_app_factory, demo_artifacts
):
    """The same replay into a fresh run folder (a second measurement, another --out, a deleted
    results folder) within the router's idempotency TTL (600 s) must be classified and metered anew.
    Before, both runs sent the same request ids: the router answered the second from its cache, so the
    second run carried the first run's energy tags (36.1 J, identical) while its window metered 0 J
    attributed to the requests, and its average power was that energy over a shorter duration."""
    url = serve_app_factory(
        traditional_config(demo_artifacts, ["tfidf-logreg"]), name="review4", route_prefix="/review4"
    )
    first, _ = _replay(url, tmp_path / "a")
    second, metrics = _replay(url, tmp_path / "b")
    assert len(first) == len(second) == 200
    assert all(r.ok for r in first + second)
    same = sum(1 for a, b in zip(first, second, strict=True) if a.energy == b.energy)
    assert same == 0, f"{same} of 200 requests of the second run carry the first run's energy tag"
    # what the service metered for the second run's requests during its window
    assert metrics["window_attributed_j"] > 0
