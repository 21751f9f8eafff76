"""Fair attribution as properties (after Li et al., SIGMETRICS 2025, with Shapley values as the
reference): for per-interval proportional sharing, the Shapley value of a request in an interval is
its weight share, so the ledger must satisfy efficiency, symmetry, null and monotonicity in weight.
Real ledger, schedules drawn by hypothesis. Units: J, s."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.energy.base import Reading
from serve_app.energy.counters import Limits
from serve_app.energy.ledger import Allocation, Ledger

pytestmark = pytest.mark.unit

request_st = st.tuples(st.integers(0, 12), st.integers(0, 12), st.floats(0.5, 20.0))  # start, end, w


def run(energies: list[float], requests: list[tuple[int, int, float]]) -> tuple[Ledger, list[Allocation]]:
    """Readings at boundaries 0..len(energies); request i begins at reading ``start`` and ends at
    reading ``end`` (clipped, ordered). Each reading at boundary b closes interval b-1."""
    n = len(energies)
    spans = [(min(s, n), min(max(s, e), n), w) for s, e, w in requests]
    counter, readings = 0.0, []
    for b in range(n + 1):
        if b:
            counter += energies[b - 1]
        readings.append(Reading(float(b), {"cpu:package-0": counter}, "rapl"))
    ledger = Ledger(readings[0], Limits.unbounded())
    allocs: dict[int, Allocation] = {}
    for b in range(n + 1):
        ledger.observe(readings[b])
        for i, (s, e, _w) in enumerate(spans):  # ends first: a request ending here leaves before starts
            if e == b and s < b:
                allocs[i] = ledger.end(f"r{i}", readings[b])
        for i, (s, e, w) in enumerate(spans):
            if s == b:
                ledger.begin(f"r{i}", readings[b], w)
                if e == b:
                    allocs[i] = ledger.end(f"r{i}", readings[b])
    return ledger, [allocs[i] for i in range(len(spans))]


@settings(max_examples=200, deadline=None)
@given(
    energies=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=12),
    requests=st.lists(request_st, min_size=1, max_size=8),
    k=st.floats(1.0, 5.0),
)
def test_efficiency_symmetry_null_monotonicity(
    energies: list[float], requests: list[tuple[int, int, float]], k: float
) -> None:
    s, e, w = requests[0]
    twin, heavier = (s, e, w), (s, e, w * k)
    ledger, allocs = run(energies, [*requests, twin, heavier])
    totals = ledger.totals()
    metered = totals.metered_j.get("cpu:package-0", 0.0)
    # efficiency: every joule goes to a request or to idle, exactly
    assert math.isclose(sum(a.joules for a in allocs) + sum(totals.idle_j.values()), metered, abs_tol=1e-7)
    assert math.isclose(metered, sum(energies), rel_tol=1e-9, abs_tol=1e-9)
    first, same, more = allocs[0], allocs[-2], allocs[-1]
    # symmetry: identical requests over the same intervals get equal shares
    assert math.isclose(first.joules, same.joules, rel_tol=1e-9, abs_tol=1e-9)
    # monotonicity in weight: a heavier request over the same intervals never gets less
    assert more.joules >= first.joules - 1e-9
    # null: a request active in no interval gets nothing
    for (rs, re, _), a in zip([*requests, twin, heavier], allocs, strict=True):
        if min(max(rs, re), len(energies)) == min(rs, len(energies)):
            assert a.joules == 0.0


def test_shapley_reference_on_one_interval() -> None:
    """One interval of 12 J shared by weights 1, 2, 3: the Shapley value of the proportional game is
    the weight share, 2, 4 and 6 J."""
    _, allocs = run([12.0], [(0, 1, 1.0), (0, 1, 2.0), (0, 1, 3.0)])
    assert [a.joules for a in allocs] == [pytest.approx(2.0), pytest.approx(4.0), pytest.approx(6.0)]
