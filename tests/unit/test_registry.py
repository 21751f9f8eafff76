"""The energy registry's keys and view, without Ray (the round trip through the GCS, and a dead
replica's snapshot kept, are in tests/integration/test_faults.py)."""

from __future__ import annotations

import json

from serve_app.registry import STALE_AFTER_S, _key, _prefix, view

NAMES = ["app", "app,", "ap", 'app"', "app\\", "ap,p", "", "[", "app ", "äpp"]


def test_an_apps_prefix_selects_its_keys_and_no_other_apps() -> None:
    for app in NAMES:
        for other in NAMES:
            for dep, rep in (("dep", "r1"), (",", '"'), ("", "")):
                owned = _key(other, dep, rep).startswith(_prefix(app))
                assert owned == (other == app), (app, other, dep, rep)


def test_view_marks_a_snapshot_stale_by_its_writers_clock() -> None:
    now = 1_000.0
    values = {
        _key("a", "tfidf", "r1"): json.dumps({"total_j": 1.0, "reported_at": now - 1.0}).encode(),
        _key("a", "tfidf", "r2"): json.dumps(
            {"total_j": 2.0, "reported_at": now - STALE_AFTER_S - 0.5}
        ).encode(),
        _key("a", "llm", "r3"): json.dumps({"total_j": 3.0, "reported_at": now}).encode(),
    }
    out = view(values, now)
    assert sorted(out) == ["llm", "tfidf"]
    assert out["tfidf"]["r1"]["stale"] is False and out["tfidf"]["r1"]["total_j"] == 1.0
    assert out["tfidf"]["r2"]["stale"] is True and out["tfidf"]["r2"]["total_j"] == 2.0
    assert out["llm"]["r3"]["stale"] is False
