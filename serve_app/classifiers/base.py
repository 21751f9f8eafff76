"""The classifier seam: a model with a fixed label set that maps texts to labels."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from serve_app.energy.keys import WorkerProcess
from serve_app.wire import Prediction


def predictions_from_proba(classes: Sequence[str], proba: Any) -> list[Prediction]:
    """One `Prediction` per row of a (texts x classes) probability matrix: argmax label, all scores."""
    return [
        Prediction(
            label=classes[int(row.argmax())], scores={c: float(p) for c, p in zip(classes, row, strict=True)}
        )
        for row in proba
    ]


class InputRejected(ValueError):
    """A text this classifier cannot take although the router's checks passed (an LLM prompt longer
    than the model's context): the client's error, answered as HTTP ``status`` with ``code`` and the
    offending ``field`` (``texts[i]``), not as a failure of the service. All arguments go to
    ``Exception.args``, so it survives pickling across the Serve hop."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(status, code, message, field)
        self.status, self.code, self.message, self.field = status, code, message, field

    def __str__(self) -> str:
        return self.message


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


WARM_UP_TEXT = "A short text."
"""What ``Classifier.warm_up`` classifies: no request's text, no training text."""

WorkSink = Callable[[int, int], None]
"""Where a classifier reports each engine step's tokens for one request: ``(prefill, decode)``."""


class Classifier(ABC):
    """A loaded model behind the server (LitServe-like: a few hooks, one class per kind).

    - ``info`` / ``labels``: what ``/v1/models`` shows; fixed once loaded.
    - ``predict(texts, mode, on_work)``: batch-first and async; a classifier whose steps process
      tokens (``stepped``) reports each step's tokens for this call to ``on_work``.
    - ``batched``: the model is one synchronous call per batch, so the server merges concurrent
      requests into one ``predict`` (Serve's dynamic batching); an engine that batches on its own
      (vLLM) is called per request.
    - ``request_weight(texts)``: the request's weight under the ``tokens`` attribution rule.
    - ``workers()``: processes outside the replica's process tree that do its work (engine ranks,
      pipeline stages), for the replica's energy meter.
    - ``warm_up()``: pay one-off first-call costs before the replica reports ready (by default one
      short text classified: the first call of a fitted model, the worker thread).
    - ``close()``: release what the classifier started.
    """

    batched: ClassVar[bool] = False
    stepped: ClassVar[bool] = False

    def __init__(self, info: ClassifierInfo) -> None:
        self._info = info

    @property
    def info(self) -> ClassifierInfo:
        return self._info

    @property
    def labels(self) -> tuple[str, ...]:
        return self._info.labels

    @abstractmethod
    async def predict(
        self, texts: list[str], mode: str | None = None, on_work: WorkSink | None = None
    ) -> list[Prediction]: ...

    def request_weight(self, texts: list[str]) -> float:
        """Estimated tokens of these texts (about 4 characters a token); LLMs count real ones."""
        return sum(len(t) for t in texts) / 4.0

    async def workers(self) -> list[WorkerProcess]:
        return []

    async def warm_up(self) -> None:
        await self.predict([WARM_UP_TEXT])

    async def check_health(self) -> None:
        """Raise when the classifier can no longer answer (an engine or a stage process died): Serve
        calls it through the replica every ``health_check_period_s`` and replaces a replica that
        raises, instead of leaving it to fail every request. Default: nothing outside the replica."""
        return None

    def close(self) -> None:
        return None
