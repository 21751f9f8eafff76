"""The energy registry's view of a replica that Serve stopped (review 5): its final snapshot, written on
its way out with ``stopped: true``, is ``stale`` at once, however recent (the round trip through Serve
and the GCS is in tests/integration/test_lifecycle_review5.py)."""

from __future__ import annotations

import json

import pytest

from serve_app.registry import _key, view

pytestmark = pytest.mark.unit


def test_a_stopped_replicas_final_snapshot_is_stale_at_once() -> None:
    now = 1_000.0
    values = {
        _key("a", "tfidf", "gone"): json.dumps(
            {"metered_j": 4.0, "reported_at": now, "stopped": True}
        ).encode(),
        _key("a", "tfidf", "live"): json.dumps({"metered_j": 2.0, "reported_at": now}).encode(),
    }
    out = view(values, now)["tfidf"]
    assert out["gone"]["stale"] is True and out["gone"]["metered_j"] == 4.0
    assert out["live"]["stale"] is False
