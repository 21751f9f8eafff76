"""Serving overhead: the router's share of the node account (its own process plus the proxy's part,
see ``account.py``) split among the requests the router handled in each interval (step 2).

The router brackets every request with :meth:`ServingOverhead.begin` / :meth:`end`; a ledger on the
router's ``AccountShareMeter`` splits each interval's energy equally among the requests in flight
(``time`` rule: the proxy and router work per request, not per text), or to the router's idle when
none is. ``end`` returns the request's ``overhead_j``. Units: J, s.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from serve_app.config_common import EnergyConfig
from serve_app.energy.base import MeterError
from serve_app.energy.sampler import Sampler
from serve_app.energy.share import account_meter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Overhead:
    """One request's serving overhead. Units: J."""

    joules: float
    domains_j: dict[str, float]
    source: str
    node: str = ""
    flags: tuple[str, ...] = ()


class ServingOverhead:
    """The router's overhead ledger. Starts in the background; until it is ready ``end`` gives None."""

    def __init__(self, cfg: EnergyConfig, node: str, node_id: str | None) -> None:
        self.cfg = cfg
        self.sampler: Sampler | None = None
        self.error: str | None = "starting"
        self._ids = itertools.count()
        if cfg.meter == "off" or not cfg.node_account:
            self.error = "off"
            return
        threading.Thread(
            target=self._start, args=(node, node_id), name="accuwatt-overhead", daemon=True
        ).start()

    def _start(self, node: str, node_id: str | None) -> None:
        try:
            self.sampler = Sampler(account_meter(self.cfg, node, node_id), self.cfg.sample_period_s).start()
            self.error = None
        except MeterError as exc:
            self.error = str(exc)
            log.error("serving overhead not metered: %s", exc)

    def begin(self) -> str | None:
        """Open a window for one request; returns its key (None while not metered)."""
        s = self.sampler
        if s is None:
            return None
        r = s.read()
        if r is None:
            return None
        key = f"o{next(self._ids)}"
        s.ledger.begin(key, r, 1.0)
        return key

    def end(self, key: str | None) -> Overhead | None:
        """Close a request's window: its serving overhead, or None when not metered."""
        s = self.sampler
        if key is None or s is None:
            return None
        r = s.read()
        if r is None:
            s.ledger.abandon(key, None)
            return None
        alloc = s.ledger.end(key, r)
        return Overhead(alloc.joules, dict(alloc.domain_j), str(r.source), s.meter.info.node, alloc.flags)

    def abandon(self, key: str | None) -> None:
        if key is not None and self.sampler is not None:
            self.sampler.ledger.abandon(key, self.sampler.read())

    def snapshot(self) -> dict[str, Any]:
        s = self.sampler
        if s is None:
            return {"error": self.error}
        t = s.ledger.totals()
        return {
            "metered_j": sum(t.metered_j.values()),
            "attributed_j": sum(t.attributed_j.values()),
            "idle_j": sum(t.idle_j.values()),
            "requests": t.requests,
            "source": s.meter.info.source,
            "group": s.meter.info.extra.get("group"),
            "error": s.error,
        }
