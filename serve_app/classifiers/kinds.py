"""The classifier kinds: one map from a spec's ``kind`` to the builder that loads it.

Adding a kind: a config type (with ``kind``, ``artifact`` and ``serve_options()``) in a config module,
added to ``config.ClassifierSpec``; a `Classifier` subclass in a module of its own; and a builder
here. Builders import their module when called, so that a replica loads only its own kind's
dependencies (vLLM is heavy and absent from the demo install).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.classifiers.base import Classifier

Builder = Callable[[Any, Path], Classifier]
"""``(spec, artifacts_dir) -> loaded classifier``."""


def _traditional(spec: Any, artifacts_dir: Path) -> Classifier:
    from serve_app.classifiers.traditional import TraditionalClassifier

    return TraditionalClassifier(artifacts_dir / spec.artifact)


def _llm(spec: Any, artifacts_dir: Path) -> Classifier:
    from serve_app.classifiers.llm import build_llm_classifier

    return build_llm_classifier(spec)


def _pipeline(spec: Any, artifacts_dir: Path) -> Classifier:
    from serve_app.classifiers.pipeline import PipelineClassifier

    return PipelineClassifier(spec, artifacts_dir)


BUILDERS: dict[str, Builder] = {"traditional": _traditional, "llm": _llm, "pipeline": _pipeline}


def build_classifier(spec: Any, artifacts_dir: Path) -> Classifier:
    """Load the classifier ``spec`` names (``spec.kind`` is one of `BUILDERS`: the config validated it)."""
    return BUILDERS[spec.kind](spec, artifacts_dir)
