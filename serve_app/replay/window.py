"""Energy of a replay window from two ``GET /v1/energy`` snapshots (pure).

``/v1/energy`` gives cumulative per-replica counters (J): ``metered_j = attributed_j + idle_j``. The
delta over a window, summed over the deployment's replicas, splits what the replicas drew during the
replay into the part the requests were charged and the idle rest. A replica that appears only in the
second snapshot counts from zero; a counter that went backwards (the replica restarted) counts its new
value, and the delta is flagged ``reset``.
"""

from __future__ import annotations

from typing import Any

COUNTERS = ("metered_j", "attributed_j", "idle_j")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _domains(rep: dict[str, Any], part: str = "metered") -> dict[str, float]:
    """Per-domain joules of ``part`` (metered/attributed/idle). ``domains`` is either
    ``{"metered": {"cpu": J}, "idle": {...}}`` or flat ``{"cpu": J}`` (metered)."""
    doms = rep.get("domains") or {}
    if isinstance(doms.get(part), dict):
        doms = doms[part]
    elif part != "metered" or any(k in doms for k in ("metered", "attributed", "idle")):
        return {}
    out: dict[str, float] = {}
    for d, v in doms.items():
        val = _num(v) if not isinstance(v, dict) else _num(v.get("metered_j", v.get("joules")))
        if val is not None:
            out[d] = val
    return out


def energy_delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None, deployment: str
) -> dict[str, Any] | None:
    """Sum over the replicas of ``deployment`` of ``after - before`` per counter; ``None`` if unknown."""
    if not after:
        return None
    reps_after = ((after.get("deployments") or {}).get(deployment) or {}).get("replicas") or {}
    reps_before = (((before or {}).get("deployments") or {}).get(deployment) or {}).get("replicas") or {}
    if not reps_after:
        return None
    total = dict.fromkeys(COUNTERS, 0.0)
    domains: dict[str, dict[str, float]] = {"metered": {}, "idle": {}}
    sources: set[str] = set()
    reset = False
    have_any = False
    for name, rep in reps_after.items():
        prev = reps_before.get(name) or {}
        sources.add(str(rep.get("source", "unavailable")))
        for c in COUNTERS:
            a, b = _num(rep.get(c)), _num(prev.get(c)) or 0.0
            if a is None:
                continue
            have_any = True
            if a < b:
                reset, b = True, 0.0
            total[c] += a - b
        for part, acc in domains.items():
            dom_b = _domains(prev, part)
            for d, a in _domains(rep, part).items():
                b = dom_b.get(d, 0.0)
                acc[d] = acc.get(d, 0.0) + (a - b if a >= b else a)
    if not have_any:
        return None
    return {
        **total,
        "domains_j": domains["metered"],
        "idle_domains_j": domains["idle"],
        "source": "+".join(sorted(sources)),
        "replicas": len(reps_after),
        "reset": reset,
    }
