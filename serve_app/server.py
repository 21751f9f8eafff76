"""One classifier replica's request logic, without Ray Serve: a classifier and its energy, given.

`ClassifierReplica` takes a loaded `Classifier` and the replica's `ReplicaEnergy` through its
constructor (``deployment.py`` builds both from config inside a Serve replica; tests build them
directly). Every request runs inside an energy window: its share of the intervals it was active in
(``energy/window.py``); the tag goes back with the predictions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.classifiers.base import Classifier, WorkSink
from serve_app.config_common import EnergyConfig
from serve_app.energy.tag import EnergyTag
from serve_app.energy.window import ReplicaEnergy
from serve_app.wire import ModelDescription, Prediction, ReplicaAnswer

Predict = Callable[[list[str], str | None, WorkSink | None], Awaitable[list[Prediction]]]
"""How the replica calls its classifier: ``classifier.predict`` itself, or a batcher in front of it."""


def request_weight(rule: str, classifier: Classifier, texts: list[str]) -> float:
    """A request's weight in its replica's energy split under the attribution ``rule``."""
    if rule == "texts":
        return float(len(texts))
    if rule == "tokens":
        return float(classifier.request_weight(texts))
    return 1.0  # "time": every open request alike


class ClassifierReplica:
    """``classify`` / ``describe`` / ``energy`` of one replica. ``predict``: how to call the classifier
    (default its own ``predict``; the Serve deployment puts its request batcher there);
    ``on_tag(tag, n_texts)``: where finished requests are recorded (metrics)."""

    def __init__(
        self,
        model_id: str,
        energy_cfg: EnergyConfig,
        classifier: Classifier,
        energy: ReplicaEnergy,
        predict: Predict | None = None,
        on_tag: Callable[[EnergyTag, int], None] | None = None,
    ) -> None:
        self.model_id = model_id
        self.rule = energy_cfg.attribution
        self.classifier = classifier
        self.energy = energy
        self._predict: Predict = predict or classifier.predict
        self._on_tag = on_tag
        # stepped: an LLM under the `tokens` rule is weighted by the tokens of each engine step
        self.stepped = self.rule == "tokens" and classifier.stepped

    async def classify(self, texts: list[str], mode: str | None, request_id: str) -> ReplicaAnswer:
        """``request_id`` is the client's correlation id, not unique (two clients, or one, may send
        the same ``X-Request-Id`` at once); the window is keyed by an id of this call alone."""
        # both ends of the window on current counters (other nodes' are polled: one round trip each)
        on_time = await self.energy.settle()
        window = self.energy.open(request_id, request_weight(self.rule, self.classifier, texts), self.stepped)
        try:
            preds = await self._predict(texts, mode, window.work if window.stepped else None)
            on_time = await self.energy.settle() and on_time
        except BaseException:  # failed or cancelled: an open window would share every later interval
            window.abandon()
            raise
        tokens = (sum(p.prompt_tokens or 0 for p in preds), sum(p.generated_tokens or 0 for p in preds))
        tag = window.close(tokens, late=not on_time)
        if self._on_tag is not None:
            self._on_tag(tag, len(texts))
        return ReplicaAnswer(predictions=preds, energy=tag)

    async def check_health(self) -> None:
        """Raise when the classifier can no longer answer (Serve then replaces the replica)."""
        await self.classifier.check_health()

    def describe(self) -> ModelDescription:
        """What ``/v1/models`` shows of the classifier once ready: its info and where its energy comes from."""
        info, meter = self.classifier.info, self.energy.info
        modes: Any = info.details.get("modes") or []
        return ModelDescription(
            id=self.model_id,
            kind=info.kind,
            labels=list(info.labels),
            devices=list(info.devices),
            energy_source=meter.source,
            energy_devices=list(meter.devices),
            node=meter.node,
            energy_notes=meter.notes,
            modes=list(modes),
            parameters=info.parameters,
            trainable_parameters=info.trainable_parameters,
            details=dict(info.details),
        )

    def close(self) -> None:
        self.energy.close()
        self.classifier.close()
