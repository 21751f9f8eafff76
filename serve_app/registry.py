"""A named Ray actor holding each replica's latest energy snapshot, so that the router can report
every replica (`GET /v1/energy`), including replicas that died: their last figures are kept and
marked ``stale``, never dropped or counted twice."""

from __future__ import annotations

import time
from typing import Any

import ray

NAMESPACE = "accuwatt"
STALE_AFTER_S = 10.0


@ray.remote(num_cpus=0, max_restarts=-1)
class EnergyRegistry:
    def __init__(self) -> None:
        self._snapshots: dict[tuple[str, str], dict[str, Any]] = {}

    def put(self, deployment: str, replica: str, snapshot: dict[str, Any]) -> None:
        self._snapshots[(deployment, replica)] = {**snapshot, "reported_at": time.time()}

    def get(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        now = time.time()
        for (dep, rep), snap in self._snapshots.items():
            out.setdefault(dep, {})[rep] = {**snap, "stale": now - snap["reported_at"] > STALE_AFTER_S}
        return out


def registry(app_name: str) -> Any:
    """Get or create the registry of one Serve application."""
    return EnergyRegistry.options(  # type: ignore[attr-defined]
        name=f"energy-registry-{app_name}", namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()
