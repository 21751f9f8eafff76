"""Energy of a replay window from two ``GET /v1/energy`` views (pure).

``/v1/energy`` gives cumulative per-replica counters (J): ``metered_j = attributed_j + idle_j``. The
delta over a window, summed over the deployment's replicas, splits what the replicas drew during the
replay into the part the requests were charged and the idle rest. A replica that the first view shows
the deployment without counts from zero; a counter that went backwards (the replica restarted) counts
its new value, and the delta is flagged ``reset``. Without a first view of the deployment (its ``GET``
never answered) the delta is unknown: the second view alone holds the replicas' lifetime totals, not
the window's.

``uncertainty_j`` bounds the error of the energy the window's requests were charged, from the node
account shares' own figures (``energy/share.py``): over any stretch of busy time a share's error is the
drift of its extrapolation plus what it moved on top of it; summed over all the window's stretches,
the drift is at most the misses the share's ticks showed during the window (each miss is the drift
over a whole tick period, busy or not), plus one edge error at each end for the periods the window
cuts, and the moves at most all it moved during the window. So, per replica of the deployment and
for the router's serving overhead: the increase of ``missed_j`` + the increase of ``adjusted_j`` +
``edge_error_j`` before + after; None when a share does not report them (a meter read as it is, an
older replica), when a replica or the router restarted in between, or the view came from another
router (the router is one replica: ``app.py``). It assumes the replay's requests are the only ones on
those replicas, as the study's protocol does.
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
    """Sum over the replicas of ``deployment`` of ``after - before`` per counter; ``None`` when either
    view is missing or lacks the deployment (module doc)."""
    dep = after.deployments.get(deployment) if after is not None else None
    prev_dep = before.deployments.get(deployment) if before is not None else None
    if dep is None or not dep.replicas or prev_dep is None:
        return None
    prev_reps = prev_dep.replicas
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
        "uncertainty_j": window_uncertainty_j(before, after, deployment),
        "domains_j": domains["metered"],
        "idle_domains_j": domains["idle"],
        "source": "+".join(sorted({rep.source for rep in dep.replicas.values()})),
        "replicas": len(dep.replicas),
        "reset": reset,
    }


def _drift_bound(before: ReplicaEnergy, after: ReplicaEnergy) -> float | None:
    """One share's bound over the window between two of its rows (module doc), or None."""
    m0, m1, e0, e1 = before.missed_j, after.missed_j, before.edge_error_j, after.edge_error_j
    if m0 is None or m1 is None or e0 is None or e1 is None:
        return None
    if m1 < m0 or after.adjusted_j < before.adjusted_j:  # the share restarted
        return None
    return m1 - m0 + after.adjusted_j - before.adjusted_j + e0 + e1


def cold_meters(view: EnergyView) -> list[str]:
    """The node-account shares of ``view`` (rows with ``missed_j``) that cannot bound their edges yet
    (``edge_error_j`` still None: fewer ticks seen than the bound needs, right after a start). A
    request they tag meanwhile gets the loose bound (average power x tick period) and a window over
    them none: ``replay`` waits for them before its first request (pure)."""
    cold = [
        f"{name}/{replica}"
        for name, dep in sorted(view.deployments.items())
        for replica, row in sorted(dep.replicas.items())
        if row.missed_j is not None and row.edge_error_j is None and not row.error
    ]
    overhead = view.serving_overhead
    if (
        overhead.get("missed_j") is not None
        and overhead.get("edge_error_j") is None
        and not overhead.get("error")
    ):
        cold.append("serving_overhead")
    return cold


def window_uncertainty_j(
    before: EnergyView | None, after: EnergyView | None, deployment: str
) -> float | None:
    """The bound of the module doc for ``deployment``'s requests over the window, or None."""
    if before is None or after is None:
        return None
    dep, prev = after.deployments.get(deployment), before.deployments.get(deployment)
    if dep is None or prev is None or not dep.replicas or set(dep.replicas) != set(prev.replicas):
        return None
    bounds = [_drift_bound(prev.replicas[n], r) for n, r in dep.replicas.items()]
    o0, o1 = before.serving_overhead, after.serving_overhead
    if "metered_j" in o1:  # the router meters an overhead: the tags carry it (its row has a replica's fields)
        same = o0.get("group") == o1.get("group")
        rows = ReplicaEnergy.model_validate(o0), ReplicaEnergy.model_validate(o1)
        bounds.append(_drift_bound(*rows) if same else None)
    return None if None in bounds else sum(b for b in bounds if b is not None)
