"""CPU time per process group over a stretch of time, by the node account's own grouping
(``energy/procs.group_of``: classifier replicas with their children, router, Serve proxy, Ray system,
other). Units: % of one core."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from serve_app.energy.procs import Proc, group_of, kind_of, scan


class CpuByGroup:
    """``start()`` then ``stop()``: what every process that lived through the stretch used."""

    def start(self, watch: Collection[int] = ()) -> CpuByGroup:
        """``watch``: processes whose CPU ``stop`` also sums as ``watched_pct``."""
        self._watch = frozenset(watch)
        self._a: dict[int, Proc] = scan()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, Any]:
        b = scan()
        wall = time.monotonic() - self._t0
        groups = group_of(b)
        by_kind: dict[str, float] = {}
        procs: list[tuple[float, str]] = []
        watched = 0.0
        for pid, p in b.items():
            before = self._a.get(pid)
            if before is None or before.start_s != p.start_s:
                continue  # started within the stretch: not counted
            pct = 100 * (p.cpu_s - before.cpu_s) / wall
            kind = kind_of(groups[pid])
            by_kind[kind] = by_kind.get(kind, 0.0) + pct
            procs.append((pct, p.title[:70]))
            watched += pct if pid in self._watch else 0.0
        return {
            "seconds": wall,
            "total_pct": sum(by_kind.values()),
            "by_kind_pct": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "watched_pct": watched,
            "top": [{"pct": pct, "title": t} for pct, t in sorted(procs, reverse=True)[:12]],
        }
