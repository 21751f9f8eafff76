"""Readiness states from Serve's deployment details, and the client's reading of ``/readyz``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.readiness import ModelState, ModelStates, deployment_state
from serve_app.replay.ready import failed_models
from serve_app.wire import ModelDescription, ModelList

HEALTH_MSG = (
    "A replica's health check failed. This deployment will be UNHEALTHY until the replica recovers or a "
    "new deploy happens."
)  # Ray 2.60, serve/_private/deployment_state.py


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
    assert deployment_state(_detail("DEPLOY_FAILED", "STARTING", message=msg))[0] == "failed"
    state, reason, _ = deployment_state(_detail("UNHEALTHY", "STOPPING"))
    assert state == "failed" and reason and "UNHEALTHY" in reason
    assert deployment_state(_detail("UNHEALTHY"))[0] == "failed"


@pytest.mark.parametrize("starting", ["STARTING", "RECOVERING", "UPDATING"])
def test_unhealthy_while_serve_replaces_a_replica_is_loading(starting: str) -> None:
    """Serve marks a deployment UNHEALTHY while it replaces a crashed replica: a replica on its way up
    means loading (a client's wait goes on), with Serve's message as the reason."""
    assert deployment_state(_detail("UNHEALTHY", "STOPPING", starting, message=HEALTH_MSG)) == (
        "loading",
        HEALTH_MSG,
        "UNHEALTHY",
    )


def test_unhealthy_with_a_running_replica_still_serves() -> None:
    assert deployment_state(_detail("UNHEALTHY", "RUNNING", "STARTING"))[0] == "ready"


def test_deploy_failed_with_a_running_replica_serves_and_keeps_serves_message() -> None:
    msg = "The deployment failed to start 3 times in a row. ValueError: no such model"
    assert deployment_state(_detail("DEPLOY_FAILED", "RUNNING", message=msg)) == (
        "ready",
        msg,
        "DEPLOY_FAILED",
    )
    assert deployment_state(_detail("HEALTHY", "RUNNING", message="ok"))[1] is None


class Backend:
    """Stands in for a Serve handle: ``describe()`` answers from whichever replica runs now."""

    deployment_name = "llm"

    def __init__(self) -> None:
        self.node, self.source, self.labels = "node-a", "nvml", ["a", "b"]
        self.calls = 0

    async def describe(self) -> ModelDescription:
        self.calls += 1
        return ModelDescription(
            id="llm",
            kind="llm",
            labels=self.labels,
            modes=["choice"],
            node=self.node,
            energy_source=self.source,
        )


class Scripted(ModelStates):
    """The real poller over a script of Serve's deployment details (the controller's answers)."""

    def __init__(self, backend: Backend, script: list[dict[str, Any]]) -> None:
        super().__init__("app", {"llm": backend})
        self.script = script

    async def _details(self) -> dict[str, Any] | None:
        return {"llm": self.script.pop(0)}


def _replicas(status: str, *replicas: tuple[str, str], message: str = "") -> dict[str, Any]:
    return {
        "status": status,
        "message": message,
        "replicas": [{"replica_id": rid, "state": s} for rid, s in replicas],
    }


def test_a_replaced_replica_is_described_again() -> None:
    """A crashed replica replaced on another node: loading while Serve starts the new one, then ready
    with the new replica's description (it was kept from the first replica forever)."""
    b = Backend()
    ms = Scripted(
        b,
        [
            _replicas("HEALTHY", ("r1", "RUNNING")),
            _replicas("UNHEALTHY", ("r2", "STARTING"), message=HEALTH_MSG),
            _replicas("HEALTHY", ("r2", "RUNNING")),
        ],
    )

    async def run() -> list[tuple[str, str | None, Any]]:
        seen = []
        for _ in range(3):
            await ms.poll()
            st = ms.states["llm"]
            seen.append((st.state, st.reason, st.description))
            b.node, b.source = "node-b", "estimate"  # the replacement comes up elsewhere
        return seen

    first, replacing, replaced = asyncio.run(run())
    assert first[0] == "ready" and first[2] is not None and first[2].node == "node-a"
    assert replacing == ("loading", HEALTH_MSG, None)  # no description of a replica that is gone
    assert replaced[0] == "ready" and replaced[2] is not None
    assert (replaced[2].node, replaced[2].energy_source) == ("node-b", "estimate")
    row = ms.states["llm"].public("llm")
    assert (row.node, row.energy_source) == ("node-b", "estimate")


def test_a_new_set_of_running_replicas_is_described_again_and_served_meanwhile() -> None:
    """A rolling update that always keeps a replica running: the state stays ready and the
    description follows the replicas that run (new labels); the same replicas are not asked again."""
    b = Backend()
    ms = Scripted(
        b,
        [
            _replicas("HEALTHY", ("r1", "RUNNING")),
            _replicas("HEALTHY", ("r1", "RUNNING")),
            _replicas("UPDATING", ("r1", "STOPPING"), ("r2", "RUNNING")),
        ],
    )

    async def run() -> None:
        await ms.poll()
        await ms.poll()
        assert b.calls == 1
        b.labels = ["Positive", "Negative"]
        await ms.poll()

    asyncio.run(run())
    st = ms.states["llm"]
    assert b.calls == 2 and st.state == "ready" and st.description is not None
    assert st.description.labels == ["Positive", "Negative"]


def test_a_failed_classifier_has_no_description() -> None:
    b = Backend()
    ms = Scripted(b, [_replicas("HEALTHY", ("r1", "RUNNING")), _replicas("DEPLOY_FAILED", message="boom")])
    asyncio.run(ms.poll())
    asyncio.run(ms.poll())
    st = ms.states["llm"]
    assert (st.state, st.reason, st.description) == ("failed", "boom", None)
    assert "labels" not in st.public("llm").model_dump(exclude_unset=True)


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


def test_a_failed_replicas_traceback_becomes_serves_sentence_and_the_exceptions_line() -> None:
    """As Ray 2.60 words a classifier whose ``reconfigure`` raised (tests/integration/
    test_config_file_user_config.py), shortened: the colour codes and the frames go, the line naming
    the setting stays."""
    exc = "ValueError: user_config {'max_batch_size': 'many'} refused (max_batch_size: Input should be a valid integer)"
    msg = (
        "The deployment failed to start 3 times in a row during a rolling update. See controller logs for "
        "details. Error:\n\x1b[36mray::ServeReplica:accuwatt:bow-logreg.initialize_and_get_metadata()\x1b[39m "
        '(pid=3124, ip=192.0.2.2)\n  File "replica.py", line 1928, in initialize\n    raise RuntimeError('
        "traceback.format_exc()) from None\nRuntimeError: Traceback (most recent call last):\n  File "
        '"config_common.py", line 154, in from_user_config\n    raise ValueError(\n' + exc + "\n"
    )
    state, reason, _ = deployment_state(_detail("DEPLOY_FAILED", "STOPPING", message=msg))
    assert state == "failed"
    assert reason == (
        "The deployment failed to start 3 times in a row during a rolling update. See controller logs for "
        "details. Error: " + exc
    )
    assert deployment_state(_detail("UNHEALTHY", "STARTING", message="\x1b[31mplain\x1b[0m"))[1] == "plain"
