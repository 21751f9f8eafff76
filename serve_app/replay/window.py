"""Energy of a replay window from two ``GET /v1/energy`` views (pure).

``/v1/energy`` gives cumulative per-replica counters (J): ``metered_j = attributed_j + idle_j``. The
delta over a window, summed over the deployment's replicas, splits what the replicas drew during the
replay into the part the requests were charged and the idle rest. A replica that appears only in the
second view counts from zero; a counter that went backwards (the replica restarted) counts its new
value, and the delta is flagged ``reset``.
"""

from __future__ import annotations

from typing import Any

from serve_app.wire import EnergyView, ReplicaEnergy

COUNTERS = ("metered_j", "attributed_j", "idle_j")
_EMPTY = ReplicaEnergy()


def _step(after: float, before: float) -> tuple[float, bool]:
    """``after - before`` of a cumulative counter, and whether it went backwards (then: ``after``)."""
    return (after, True) if after < before else (after - before, False)


def energy_delta(
    before: EnergyView | None, after: EnergyView | None, deployment: str
) -> dict[str, Any] | None:
    """Sum over the replicas of ``deployment`` of ``after - before`` per counter; ``None`` if unknown."""
    dep = after.deployments.get(deployment) if after is not None else None
    if dep is None or not dep.replicas:
        return None
    prev_dep = before.deployments.get(deployment) if before is not None else None
    prev_reps = prev_dep.replicas if prev_dep is not None else {}
    total = dict.fromkeys(COUNTERS, 0.0)
    domains: dict[str, dict[str, float]] = {"metered": {}, "idle": {}}
    reset = False
    for name, rep in dep.replicas.items():
        prev = prev_reps.get(name, _EMPTY)
        for c in COUNTERS:
            d, back = _step(getattr(rep, c), getattr(prev, c))
            total[c] += d
            reset = reset or back
        for part, acc in domains.items():
            prev_part = prev.domains.get(part, {})
            for dom, a in rep.domains.get(part, {}).items():
                acc[dom] = acc.get(dom, 0.0) + _step(a, prev_part.get(dom, 0.0))[0]
    return {
        **total,
        "domains_j": domains["metered"],
        "idle_domains_j": domains["idle"],
        "source": "+".join(sorted({rep.source for rep in dep.replicas.values()})),
        "replicas": len(dep.replicas),
        "reset": reset,
    }
