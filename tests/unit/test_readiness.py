"""Readiness states from Serve's deployment details, and the client's reading of ``/readyz``."""

from __future__ import annotations

from serve_app.readiness import ModelState, deployment_state
from serve_app.replay.ready import failed_models
from serve_app.wire import ModelDescription, ModelList


def _detail(status: str, *replica_states: str, message: str = "") -> dict[str, object]:
    return {"status": status, "message": message, "replicas": [{"state": s} for s in replica_states]}


def test_not_registered_is_loading() -> None:
    state, reason, serve_status = deployment_state(None)
    assert state == "loading" and reason and serve_status is None


def test_starting_replica_is_loading_with_serve_message() -> None:
    assert deployment_state(_detail("UPDATING", "STARTING", message="1 replica starting")) == (
        "loading",
        "1 replica starting",
        "UPDATING",
    )


def test_one_running_replica_is_ready_even_while_upscaling() -> None:
    assert deployment_state(_detail("UPSCALING", "RUNNING", "STARTING"))[0] == "ready"
    assert deployment_state(_detail("HEALTHY", "RUNNING"))[:2] == ("ready", None)


def test_failed_without_running_replica_carries_serve_reason() -> None:
    msg = "The deployment failed to start 3 times in a row. ValueError: no such model"
    assert deployment_state(_detail("DEPLOY_FAILED", message=msg)) == ("failed", msg, "DEPLOY_FAILED")
    state, reason, _ = deployment_state(_detail("UNHEALTHY", "STOPPING"))
    assert state == "failed" and reason and "UNHEALTHY" in reason


def test_unhealthy_with_a_running_replica_still_serves() -> None:
    assert deployment_state(_detail("UNHEALTHY", "RUNNING", "STARTING"))[0] == "ready"


def test_public_entry_puts_state_over_description() -> None:
    st = ModelState(
        state="ready",
        reason=None,
        serve_status="HEALTHY",
        description=ModelDescription(id="m", labels=["a"], modes=[]),
    )
    body = st.public("m").model_dump(exclude_unset=True)  # as the router writes it
    assert body["id"] == "m" and body["labels"] == ["a"] and body["state"] == "ready"
    assert body["energy_source"] is None and body["details"] == {}  # a ready row has every field
    loading = ModelState().public("x").model_dump(exclude_unset=True)
    assert loading["id"] == "x" and loading["state"] == "loading" and "labels" not in loading
    assert loading["reason"] and loading["serve_status"] is None
    # what a reader makes of the loading row: no labels known (so a label check says "unknown")
    assert ModelList.model_validate({"models": [loading]}).entry("x").labels == []


def test_failed_models_reads_only_failed_entries() -> None:
    body = {
        "status": "not_ready",
        "not_ready": {
            "llm": {"state": "loading", "reason": "no replica is running yet"},
            "bad": {"state": "failed", "reason": "ValueError: no such model"},
        },
    }
    assert failed_models(body) == {"bad": "ValueError: no such model"}
    assert failed_models({"status": "not_ready", "not_ready_count": 2}) == {}
