"""Each replica's latest energy snapshot, kept in Ray's GCS key-value store, so that the router can
report every replica (`GET /v1/energy`), including replicas that died: their last figures are kept
(the GCS outlives them) and marked ``stale``, never dropped or counted twice.

The store is the GCS's own (``ray.experimental.internal_kv``), not an actor of ours: an idle Ray actor
costs about 1.2 % of a core and 200 wake-ups a second here, taken from the engines it meters. A replica
writes one key a second from its export thread; the router lists the app's keys and reads them in one
call. Keys are JSON arrays ``["energy", app, deployment, replica]``, so that no name can alias another;
values are the snapshot's JSON with the writer's clock (``reported_at``). A replica that Serve stops
(scale-down, redeploy, app deleted) writes its final snapshot with ``stopped: true`` on its way out: it
is ``stale`` at once, not only ``STALE_AFTER_S`` later.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ray.experimental.internal_kv import internal_kv_get_gcs_client

NAMESPACE = "accuwatt"
STALE_AFTER_S = 10.0
PUT_TIMEOUT_S = 5.0
FINAL_PUT_TIMEOUT_S = 2.0
"""The longest a stopping replica waits to write its final snapshot (inside Serve's shutdown budget)."""

Snapshots = dict[str, dict[str, dict[str, Any]]]
"""deployment -> replica -> snapshot (with ``reported_at`` and ``stale``)."""


def _key(app: str, deployment: str, replica: str) -> bytes:
    return json.dumps(["energy", app, deployment, replica]).encode()


def _prefix(app: str) -> bytes:
    """The keys of one app and of no other: the JSON array up to the comma after the app's name."""
    return json.dumps(["energy", app])[:-1].encode() + b","


def _gcs() -> Any:
    client = internal_kv_get_gcs_client()
    if client is None:
        raise RuntimeError("not connected to Ray: the energy registry lives in the GCS")
    return client


def put(
    app: str, deployment: str, replica: str, snapshot: dict[str, Any], timeout_s: float = PUT_TIMEOUT_S
) -> None:
    """Record one replica's snapshot (blocking: call it from a thread, not an event loop)."""
    value = json.dumps({**snapshot, "reported_at": time.time()}).encode()
    _gcs().internal_kv_put(_key(app, deployment, replica), value, True, NAMESPACE, timeout=timeout_s)


def view(values: dict[bytes, bytes], now: float) -> Snapshots:
    """The stored values as deployment -> replica -> snapshot, each marked ``stale`` when its writer
    has not reported for ``STALE_AFTER_S`` (by the writer's clock against ``now``) or has stopped."""
    out: Snapshots = {}
    for key, raw in values.items():
        _, _, deployment, replica = json.loads(key)
        snap = json.loads(raw)
        out.setdefault(deployment, {})[replica] = {
            **snap,
            "stale": bool(snap.get("stopped")) or now - snap["reported_at"] > STALE_AFTER_S,
        }
    return out


async def get(app: str, timeout_s: float) -> Snapshots:
    """Every replica snapshot of one app: two GCS calls, each within ``timeout_s``."""
    gcs = _gcs()
    keys = await gcs.async_internal_kv_keys(_prefix(app), NAMESPACE, timeout_s)
    if not keys:
        return {}
    values = await gcs.async_internal_kv_multi_get(keys, NAMESPACE, timeout_s)
    return view(values, time.time())
