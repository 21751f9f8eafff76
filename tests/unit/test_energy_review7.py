"""Review 7: a run's ± never wider than what its metered devices can draw over the run; LLM labels
that differ only in case refused where an answer cannot tell them apart."""

from __future__ import annotations

import pytest

from serve_app.energy.base import MeterInfo
from serve_app.energy.ledger import Allocation
from serve_app.energy.tag import Overhead, add_overhead, make_tag
from serve_app.replay.records import Record
from serve_app.replay.summary import split_metrics

# a node account share on a 75 W VM (the estimate's CPU TDP and memory), one-second ticks, whose
# extrapolation missed by up to 10 J over a tick: each request's edge bound is ~20 J
VM_W = {"cpu:node": 60.0, "dram:node": 15.0}
SHARE = MeterInfo(
    "estimate",
    ("cpu:node", "dram:node"),
    resolution_j=1e-3,
    update_period_s=1.0,
    node="vm",
    edge_error_j=10.0,
    missed_j=40.0,
    max_power_w=VM_W,
)


def _tag(joules: float, start_s: float, window_s: float, replica: str = "rep-1"):  # type: ignore[no-untyped-def]
    alloc = Allocation(
        "r",
        start_s,
        start_s + window_s,
        {"cpu:node": joules * 0.8, "dram:node": joules * 0.2},
        {"cpu": joules * 0.8, "dram": joules * 0.2},
        1.0,
        2,
        20,
    )
    return make_tag(alloc, SHARE, "texts", replica)


def _records(n_ok: int, n_failed: int, joules_each: float) -> list[Record]:
    """One session: 40 requests sent within 0.5 s of each other; the failed ones are forced timeouts
    (no tag), the others answered after 1.5 s with a 1.4 s window in the replica."""
    t0 = 1_700_000_000.0
    n = n_ok + n_failed
    answered = {*range(0, 2 * (n_ok - 1), 2), n - 1}  # the first and the last, every other between
    out = []
    for i in range(n):
        sent = t0 + 0.5 * i / (n - 1)
        ok = i in answered
        common = dict(
            model="m", split="s", request_index=i, request_id=f"q{i}", session="a",
            text_ids=[str(i)], gold=["pos"], sent_unix_s=sent,
        )  # fmt: skip
        if ok:
            out.append(
                Record(
                    **common,
                    predicted=["pos"],
                    total_s=1.5,
                    latency_s=1.5,
                    energy=_tag(joules_each, 100.0 + 0.05 * i, 1.4),
                )
            )
        else:
            out.append(Record(**common, total_s=1.0, error="timeout", error_code="timeout"))
    return out


def test_run_uncertainty_never_exceeds_what_the_devices_can_draw_over_the_run() -> None:
    recs = _records(n_ok=20, n_failed=20, joules_each=1.95)
    assert sum(1 for r in recs if r.ok) == 20
    m = split_metrics(recs)
    assert m.energy_j == pytest.approx(39.0)
    # the run: first send at 0, last answer at 0.5 + 1.5 s = 2.0 s; its devices draw 75 W at most, so
    # the energy its tags stand for lies in [0, 150 J]: 39 J is at most 111 J from it
    span_s = 2.0
    most_j = (60.0 + 15.0) * span_s
    each_tag = [r.energy.uncertainty_j for r in recs if r.energy is not None]
    assert sum(u for u in each_tag if u is not None) > most_j  # the tags' sum alone said more
    assert m.uncertainty_j is not None
    assert m.uncertainty_j <= max(39.0, most_j - 39.0) + 1e-9
    assert m.uncertainty_j == pytest.approx(111.0)


def test_run_cap_counts_every_replica_and_leaves_a_small_bound_alone() -> None:
    # two replicas on their own nodes: the run's devices are both VMs' (150 W)
    recs = _records(n_ok=20, n_failed=20, joules_each=1.95)
    two = [
        r.model_copy(update={"energy": r.energy.model_copy(update={"replica": f"rep-{i // 2 % 2}"})})
        if r.energy is not None
        else r
        for i, r in enumerate(recs)
    ]
    m = split_metrics(two)
    assert m.uncertainty_j == pytest.approx(2 * 75.0 * 2.0 - 39.0)
    # a run whose tags' bound is already inside physics keeps it: 2 requests, each ~20 J
    few = _records(n_ok=2, n_failed=38, joules_each=1.0)
    small = split_metrics(few)
    tags_sum = sum(r.energy.uncertainty_j or 0.0 for r in few if r.energy is not None)
    assert small.uncertainty_j == pytest.approx(tags_sum)
    assert tags_sum < 75.0 * 2.0 - 2.0


def test_overhead_from_another_node_leaves_the_devices_unknown() -> None:
    tag = _tag(2.0, 100.0, 1.0)
    same = add_overhead(tag, Overhead(0.1, {"cpu": 0.1}, "estimate", "vm", (), 0.01, 0, 0.01))
    other = add_overhead(tag, Overhead(0.1, {"cpu": 0.1}, "estimate", "head", (), 0.01, 0, 0.01))
    assert same.max_power_w == pytest.approx(75.0)  # the router's share is of the same node's counters
    assert other.max_power_w is None  # the router's node's devices are not the tag's


# -- labels an LLM's answer cannot tell apart --------------------------------------------------------
@pytest.mark.parametrize(
    "labels",
    [["Positive", "positive"], ["Sport", "neutral", "SPORT"], ["Caf\u00e9", "cafe\u0301"]],
)
def test_llm_labels_that_differ_only_in_case_are_refused(labels: list[str]) -> None:
    from pydantic import ValidationError

    from serve_app.classifiers.llm_config import LLMSpec

    with pytest.raises(ValidationError, match="differ only in case"):
        LLMSpec(id="m", model="/models/m", labels=labels)


def test_llm_labels_alike_only_after_punctuation_stay_allowed() -> None:
    from serve_app.classifiers.llm_config import LLMSpec
    from serve_app.classifiers.prompts import match_label

    spec = LLMSpec(id="m", model="/models/m", labels=["Yes", "Yes!", "No"])
    assert match_label("yes!", spec.labels) == "Yes!" and match_label("YES", spec.labels) == "Yes"


def test_traditional_labels_that_differ_in_case_stay_apart() -> None:
    """A trained classifier predicts label ids: "Positive" and "positive" are two classes."""
    from serve_app.classifiers.traditional import fit

    texts = ["good film", "great film", "bad film", "awful film"] * 3
    gold = ["Positive", "positive", "negative", "Negative"] * 3
    model = fit("bow-logreg", texts, gold)
    assert set(model.classes) == {"Positive", "positive", "negative", "Negative"}
    assert list(model.predict_proba(["great film"]).shape) == [1, 4]
