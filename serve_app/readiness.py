"""What the router knows about each classifier's readiness, from Serve's own deployment status.

A background task in the router replica asks the Serve controller for the application's deployment
details (the dict behind ``serve.status()``) with a bounded timeout, and derives each classifier's
state:

- ``loading``: no replica of the deployment is ``RUNNING`` yet (its constructor, e.g. a vLLM engine
  start, is still running; or Serve replaces a replica that crashed or failed its health check, and
  marks the deployment ``UNHEALTHY`` meanwhile), or one is but the router has not read its
  description yet; ``reason``: Serve's message when it has one;
- ``ready``: a replica is ``RUNNING`` and its ``describe()`` answered (labels, modes, parameters are
  known); only then does the router send it requests. ``reason`` keeps Serve's message while Serve
  marks the deployment ``DEPLOY_FAILED`` or ``UNHEALTHY`` (e.g. a new version failed to start while
  the old replicas still serve);
- ``failed``: no replica is running and Serve marks the deployment ``DEPLOY_FAILED``, or
  ``UNHEALTHY`` with no replica starting either; ``reason`` carries Serve's message (e.g. the
  constructor's exception).

Serve's message can hold a replica's whole traceback, coloured for a terminal: ``reason`` is its first
line and the exception's own line (the traceback stays in Serve's controller log, as the message says).

The description belongs to the replicas that answered it: it is dropped whenever the classifier is
not ready, and read again when the set of ``RUNNING`` replicas changes (a replacement may run on
another node, with another meter, or a new version with other labels).

The request path only reads the cached view (`ModelStates.view`); it waits for the first poll at most
``FIRST_POLL_WAIT_S``. ``describe()`` is called only on a deployment Serve reports running, so the
router never waits on a replica still in its constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve_app.timeouts import within
from serve_app.wire import ModelDescription, ModelEntry

log = logging.getLogger("accuwatt.readiness")

STATUS_TIMEOUT_S = 2.0
"""Longest wait for the controller's deployment details in one poll."""
DESCRIBE_TIMEOUT_S = 5.0
"""Longest wait for a running replica's ``describe()``."""
POLL_LOADING_S = 0.5
"""Poll period while some classifier is not ready."""
POLL_READY_S = 2.0
"""Poll period once all are ready (a replica that dies and restarts is seen within this)."""
FIRST_POLL_WAIT_S = 0.8
"""The first request after the router starts waits at most this long for the first poll."""
LOADING_RETRY_AFTER_S = 5
FAILED_STATUSES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
STARTING_REPLICA_STATES = frozenset({"STARTING", "UPDATING", "RECOVERING"})
"""Serve's states of a replica on its way to ``RUNNING`` (``ray.serve._private.common.ReplicaState``)."""


@dataclass
class ModelState:
    """One classifier as the router sees it. ``description`` is its replica's ``describe()``."""

    state: str = "loading"
    reason: str | None = "the router has not yet read Serve's deployment status"
    serve_status: str | None = None
    description: ModelDescription | None = None
    described_replicas: frozenset[str] | None = None
    """The ``RUNNING`` replicas when ``description`` was asked for (None: no description)."""
    since_unix_s: float = field(default_factory=time.time)

    def public(self, model_id: str) -> ModelEntry:
        """The ``/v1/models`` row: the description (when known) plus state, reason, Serve status."""
        known = self.description.model_dump() if self.description is not None else {}
        return ModelEntry(
            **{**known, "id": model_id},
            state=self.state,
            reason=self.reason,
            serve_status=self.serve_status,
            since_unix_s=self.since_unix_s,
        )


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def readable(message: str) -> str:
    """Serve's message without terminal colours and, where it holds a traceback, as its first line and
    the last one (the exception raised), e.g. "The deployment failed to start 3 times in a row ...
    Error: ValueError: user_config {...} refused (...)" (pure)."""
    text = _ANSI.sub("", message).strip()
    if "Traceback (most recent call last)" not in text:
        return text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def _text(value: Any) -> str:
    """An enum member or a string, as its plain value."""
    return str(getattr(value, "value", value))


def running_replicas(detail: dict[str, Any] | None) -> frozenset[str]:
    """The ids of a deployment's ``RUNNING`` replicas in its Serve details (pure)."""
    replicas = (detail or {}).get("replicas") or []
    return frozenset(
        str(r.get("replica_id") or f"#{i}")
        for i, r in enumerate(replicas)
        if _text(r.get("state")) == "RUNNING"
    )


def deployment_state(detail: dict[str, Any] | None) -> tuple[str, str | None, str | None]:
    """``(state, reason, serve_status)`` of a deployment from its Serve details (pure); ``ready``
    here means a replica is running (the router still has to read its description)."""
    if detail is None:
        return "loading", "the deployment is not registered with Serve yet", None
    status = _text(detail.get("status", ""))
    message = readable(str(detail.get("message") or "")) or None
    states = [_text(r.get("state")) for r in detail.get("replicas") or []]
    if "RUNNING" in states:
        # A running replica serves whatever Serve thinks of the rest; its message stays in sight.
        return "ready", message if status in FAILED_STATUSES else None, status
    starting = any(s in STARTING_REPLICA_STATES for s in states)
    if status == "DEPLOY_FAILED" or (status in FAILED_STATUSES and not starting):
        return "failed", message or f"Serve reports the deployment {status}", status
    # UNHEALTHY with a replica starting: Serve replaces one that crashed or failed its health check.
    return "loading", message or "no replica is running yet", status


class Describable(Protocol):
    """What the poller needs of a classifier (``backends.py`` gives it for both layouts)."""

    deployment_name: str

    async def describe(self) -> ModelDescription: ...


class ModelStates:
    """The cached states of one application's classifiers, refreshed by a background task."""

    def __init__(self, app_name: str, backends: Mapping[str, Describable]) -> None:
        self.app_name = app_name
        self.backends = backends
        self.states = {m: ModelState() for m in backends}
        self._polled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._controller: Any = None

    # -- the request path ------------------------------------------------------------------------
    async def view(self) -> dict[str, ModelState]:
        """The current states; starts the poller on first use and waits (bounded) for its first pass."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll_forever())
        if not self._polled.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._polled.wait(), FIRST_POLL_WAIT_S)
        return self.states

    def all_ready(self) -> bool:
        return all(s.state == "ready" for s in self.states.values())

    # -- the poller ------------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # the poller must outlive any one failure
                log.exception("readiness poll failed")
            self._polled.set()
            await asyncio.sleep(POLL_READY_S if self.all_ready() else POLL_LOADING_S)

    async def _details(self) -> dict[str, Any] | None:
        """This application's deployments from the controller, or ``None`` if it did not answer."""
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        try:
            if self._controller is None:
                self._controller = await asyncio.to_thread(
                    ray.get_actor, SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE
                )
            details = await within(self._controller.get_serve_instance_details.remote(), STATUS_TIMEOUT_S)
        except Exception as exc:
            log.warning("Serve controller status unavailable: %s", type(exc).__name__)
            self._controller = None
            return None
        app = (details.get("applications") or {}).get(self.app_name) or {}
        return dict(app.get("deployments") or {})

    async def poll(self) -> None:
        """One pass: Serve's status of every classifier, then the description of newly running ones."""
        deployments = await self._details()
        if deployments is None:
            return  # keep the last known states; the next poll retries
        to_describe: list[tuple[str, frozenset[str], str | None]] = []
        for model_id, st in self.states.items():
            detail = deployments.get(self._name(model_id))
            state, reason, serve_status = deployment_state(detail)
            st.serve_status = serve_status
            if state != "ready":  # the description was the replicas' that no longer run
                st.description, st.described_replicas = None, None
            else:
                running = running_replicas(detail)
                if st.description is None:
                    to_describe.append((model_id, running, reason))
                    state, reason = "loading", "a replica is running; reading its description"
                elif running != st.described_replicas:  # kept (and served) until the new one answers
                    to_describe.append((model_id, running, reason))
            self._set(model_id, st, state, reason)
        await asyncio.gather(*(self._describe(m, running, reason) for m, running, reason in to_describe))

    async def _describe(self, model_id: str, running: frozenset[str], reason: str | None) -> None:
        st = self.states[model_id]
        try:
            description = await within(self.backends[model_id].describe(), DESCRIBE_TIMEOUT_S)
        except Exception as exc:  # retried on the next poll
            if st.description is None:
                st.reason = f"describe() of a running replica failed: {type(exc).__name__}"
            return
        st.description, st.described_replicas = description, running
        self._set(model_id, st, "ready", reason)

    def _name(self, model_id: str) -> str:
        return self.backends[model_id].deployment_name

    @staticmethod
    def _set(model_id: str, st: ModelState, state: str, reason: str | None) -> None:
        if state != st.state:
            log.info("classifier %s: %s -> %s (%s)", model_id, st.state, state, reason or "")
            st.since_unix_s = time.time()
        st.state, st.reason = state, reason
