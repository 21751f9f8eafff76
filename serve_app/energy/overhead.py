"""Serving overhead: the router's share of the node account (its own process plus the proxy's part,
see ``account.py``) split among the requests the router handled in each interval (step 2).

The router brackets every request with :meth:`ServingOverhead.begin` / :meth:`end`; a ledger on the
router's ``AccountShareMeter`` splits each interval's energy equally among the requests in flight
(``time`` rule: the proxy and router work per request, not per text), or to the router's idle when
none is. ``end`` returns the request's ``overhead_j``. Units: J, s.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import MeterError
from serve_app.energy.footprint import account_meter
from serve_app.energy.ledger import METER_GAP
from serve_app.energy.tag import Overhead
from serve_app.energy.window import ReplicaEnergy, RequestWindow

log = logging.getLogger(__name__)
OverheadState = Literal["starting", "metered", "off", "single_hop", "failed"]
STATE_NOTES: dict[str, str] = {  # the states without a meter
    "starting": "the router's meter is starting",
    "off": "metering is off (energy.meter off, or no node account)",
    "single_hop": "single-hop layout: the router runs in the classifier's process, whose share covers it",
    "failed": "the router's meter could not start (error)",
}


class ServingOverhead:
    """The router's overhead: a `ReplicaEnergy` on the router's account share under the ``time`` rule
    (every request in flight alike). Starts in the background; until it is ready ``begin`` gives None."""

    def __init__(self, cfg: EnergyConfig, node: str, node_id: str | None, single_hop: bool = False) -> None:
        """``single_hop``: the router meters no overhead of its own (the classifier's share already
        covers the router's process)."""
        self.cfg = cfg.model_copy(update={"attribution": "time"})
        self.energy: ReplicaEnergy | None = None
        self.state: OverheadState = "starting"
        self.error: str | None = None  # why the meter could not start (state ``failed``)
        if single_hop:
            self.state = "single_hop"
        elif cfg.meter == "off" or not cfg.node_account:
            self.state = "off"
        else:
            threading.Thread(
                target=self._start, args=(node, node_id), name="accuwatt-overhead", daemon=True
            ).start()

    def _start(self, node: str, node_id: str | None) -> None:
        try:
            self.energy = ReplicaEnergy(account_meter(self.cfg, node, node_id), self.cfg, "router", [])
            self.state = "metered"
        except MeterError as exc:
            self.error, self.state = str(exc), "failed"
            log.error("serving overhead not metered: %s", exc)

    def begin(self) -> RequestWindow | None:
        """Open a window for one request (None while not metered)."""
        return None if self.energy is None else self.energy.open("overhead", 1.0)

    def end(self, window: RequestWindow | None) -> Overhead | None:
        """Close a request's window: its serving overhead, or None when not metered."""
        if window is None or self.energy is None:
            return None
        tag = window.close()
        if tag.joules is None:
            return None
        # what its figure misses or mistook: counter steps, and a router meter outage during the
        # request (the outage's part of the overhead is unknown: ``overhead_meter_gap`` on the tag)
        counter_flags = tuple(f for f in tag.flags if f.startswith("counter_") or f == METER_GAP)
        return Overhead.of_tag(tag, self.energy.info.node, counter_flags)

    def abandon(self, window: RequestWindow | None) -> None:
        if window is not None:
            window.abandon()

    def snapshot(self) -> dict[str, Any]:
        """``/v1/energy``'s ``serving_overhead``: its ``state`` and, when ``metered``, the router's ledger
        (a replica row's fields; ``error`` there is its meter's, as a replica's)."""
        if self.energy is None:
            return {"state": self.state, "note": STATE_NOTES[self.state], "error": self.error}
        snap = self.energy.snapshot()
        keys = (
            *("metered_j", "attributed_j", "idle_j", "requests", "open_requests", "source", "error"),
            *("edge_error_j", "missed_j", "adjusted_j"),
        )
        return {
            "state": "metered",
            **{k: snap[k] for k in keys},
            "group": self.energy.info.extra.get("group"),
        }
