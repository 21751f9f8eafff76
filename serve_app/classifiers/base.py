"""The classifier seam: a model with a fixed label set that maps texts to labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Prediction:
    """One text's answer. ``scores`` (label -> score) and token counts are optional extras."""

    label: str
    scores: dict[str, float] | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    parsed: bool = True
    raw: str | None = None


def predictions_from_proba(classes: Sequence[str], proba: Any) -> list[Prediction]:
    """One `Prediction` per row of a (texts x classes) probability matrix: argmax label, all scores."""
    return [
        Prediction(
            label=classes[int(row.argmax())], scores={c: float(p) for c, p in zip(classes, row, strict=True)}
        )
        for row in proba
    ]


@dataclass(frozen=True)
class ClassifierInfo:
    """What `/v1/models` shows for a classifier."""

    model_id: str
    kind: str  # "traditional" or "llm"
    labels: tuple[str, ...]
    devices: tuple[str, ...] = ("cpu",)
    parameters: int | None = None
    trainable_parameters: int | None = None
    """What training fitted (CEGI's normaliser): not a frozen encoder, 0 for a zero-shot LLM."""
    details: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Classifier(Protocol):
    """A loaded model. ``predict`` is synchronous and batch-first: one call, many texts."""

    @property
    def info(self) -> ClassifierInfo: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    def predict(self, texts: list[str]) -> list[Prediction]: ...
