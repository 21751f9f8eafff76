"""How the router reaches a classifier: a deployment behind a Serve handle (two hops), or the classifier
in the router's own replica (``router.layout: single_hop``). The router and its readiness poller talk to
either through the same three calls."""

from __future__ import annotations

from typing import Any, Protocol

from serve_app.deployment import ClassifierHost
from serve_app.wire import ModelDescription, ReplicaAnswer


class Backend(Protocol):
    deployment_name: str
    """The Serve deployment whose status tells whether the classifier runs."""
    local: bool
    """True when the classifier runs in the router's process (single hop)."""

    async def classify(self, texts: list[str], mode: str | None, request_id: str) -> ReplicaAnswer: ...
    async def describe(self) -> ModelDescription: ...
    async def energy_snapshot(self) -> tuple[str, dict[str, Any]]: ...


class RemoteClassifier:
    """A classifier deployment (``ClassifierServer``) behind its Serve handle."""

    local = False

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.deployment_name = str(handle.deployment_name)

    async def classify(self, texts: list[str], mode: str | None, request_id: str) -> ReplicaAnswer:
        raw: str = await self.handle.classify_json.remote(texts, mode, request_id)
        return ReplicaAnswer.model_validate_json(raw)

    async def describe(self) -> ModelDescription:
        description: ModelDescription = await self.handle.describe.remote()
        return description

    async def energy_snapshot(self) -> tuple[str, dict[str, Any]]:
        snap: tuple[str, dict[str, Any]] = await self.handle.energy_snapshot.remote()
        return snap


class LocalClassifier:
    """The classifier in the router's replica (single hop): called directly, no Serve hop."""

    local = True

    def __init__(self, host: ClassifierHost, deployment_name: str) -> None:
        self.host = host
        self.deployment_name = deployment_name

    async def classify(self, texts: list[str], mode: str | None, request_id: str) -> ReplicaAnswer:
        return await self.host.classify(texts, mode, request_id)

    async def describe(self) -> ModelDescription:
        return self.host.describe()

    async def energy_snapshot(self) -> tuple[str, dict[str, Any]]:
        return self.host.energy_snapshot()
