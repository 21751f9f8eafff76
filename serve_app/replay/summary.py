"""Pure aggregation: the records (and window lines) of a run -> typed metrics, per split and averaged.

Definitions (units in names; Wh only here, at reporting time):

- ``accuracy``: correctly labelled test texts / all test texts of the split; a failed request's texts
  and answers that are no label count as wrong (as in the study).
- ``macro_f1``: unweighted mean over the gold labels of the split of per-label F1.
- ``energy_j``: the sum of the per-request energy tags (the service's attributed energy); ``None`` when
  no request carried a figure (never a fake zero). ``energy_source`` names the tag source(s); a run
  whose tags are ``estimate`` is an estimate, and mixed sources read ``mixed:<a>+<b>`` with
  ``measured = False``. ``measured`` says whether the tags present all come from a measuring source;
  requests without a figure (a failed request has none) are counted in ``energy_missing`` and make
  the source read ``<source> (partial)``: the sum then covers only the tagged requests. So are
  requests whose figure lacks part of their energy (``METER_GAP``: open across a meter outage, the
  outage's energy is unknown): the sum is a lower bound, not the run's energy.
- ``uncertainty_j``: of ``energy_j``. Each tag's uncertainty covers what can shift across its window's
  two edges; in the sum, an edge two back-to-back requests share moves energy from one to the other and
  cancels, so what remains is the error at the two ends of each busy stretch (a request that began with
  none open, in its replica's or the router's ledger: ``attribution.stretch_starts``). The figure is the
  smaller of the tags' uncertainties summed and the stretches x the largest tag edge bound
  (``edge_uncertainty_j``: a tag's uncertainty before it is capped at what its devices can draw over
  its window, which bounds one short window, not a stretch's ends); the sum
  alone when a request has no figure (a failed request's edges are not paired in the sum) or a tag does
  not count its stretches. When every replay window of the run has the bound its shares' own figures
  give (``replay.window``: their misses and moves during the window and an edge error at each end, a
  drift bound that does not grow with the number of stretches), the smaller of that sum and the
  stretch figure. Both assume the replay's requests are the only ones on those replicas (as in the
  study's protocol): another client's request at an edge leaves that edge unpaired. The windows count
  only when every session with records for the split has its window line (a killed session writes
  none): otherwise they cover part of the split, and the tag figure stands alone. Never wider than
  physics (``physical_cap_j``): the energy the tags stand for lies between 0 and what their devices
  can draw over the run (``EnergyTag.max_power_w``, per replica, summed over the replicas, x the
  sessions' spans from the first tagged request sent to its last answer, each plus the longest time a
  tag's figure can hold beyond its window: ``EnergyTag.span_s``), so the error of ``energy_j`` is at
  most ``max(energy_j, that - energy_j)``. The ± stays one symmetric figure (the report's column):
  capped at the larger side, it overstates the smaller one (below 0 or above the devices' maximum
  nothing is possible). No cap when a tag does not say its devices' maximum.
- ``duration_s``: per session, from the first request sent to the last answer, summed over the
  sessions that replayed this split (a resumed run has several).
- ``avg_power_w = energy_j / duration_s``.
- **Accuracy per Wh**: ``accuracy_per_wh = accuracy / energy_wh``, where ``accuracy`` is in [0, 1] and
  ``energy_wh`` is the attributed energy of one run (one pass over the split's test set, ``n_texts``
  texts). Higher is better. It scales with the test-set size: compare models on the same splits (for a
  size-free figure use ``wh_per_1k`` = Wh per 1,000 classified texts).
- ``co2e_g = energy_wh / 1000 * carbon_g_per_kwh`` (a country's grid intensity, ``serve_app.carbon``).
- ``majority_accuracy``: the share of test texts whose gold label is the TRAINING split's most
  frequent label; ``gain_pp = 100 * (accuracy - majority_accuracy)``. Both ``None`` when the training
  majority is unknown (a ``--test-file`` run): the test labels are never used as the baseline.
- **CEGI** (``cegi``, the paper's index) and ``cegi_all_parameters`` (accuwatt's former variant), and
  the comparable units (J per request, per prompt and output token, the steady-state window, Wh per
  1,000 queries, ``energy_scope``): defined in ``serve_app/replay/units.py``. ``j_per_request``,
  ``j_per_text`` and ``wh_per_1k`` divide the tags' sum by the tagged requests and their texts only.
- ``idle_j`` / ``metered_j`` / ``window_attributed_j``: deltas of the deployment's ``/v1/energy``
  counters over the replay windows (``metered = attributed + idle``), and ``codecarbon_*`` CodeCarbon's
  figures over them; ``None`` unless every session with records has a window line with the figure,
  and the deltas ``None`` when a replica restarted during a window (``reset``: they lack its energy
  before the restart).
- Over splits (``average_over_splits``): a CEGI is n/a on a split without a gain, so the mean CEGI is
  given only when every split has one (else ``None``, and ``cegi_note`` says on how many it is n/a);
  so is the mean accuracy per Wh (n/a on a split without energy, whose accuracy the mean accuracy
  still counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from serve_app.energy.base import MEASURED_SOURCES
from serve_app.energy.ledger import METER_GAP
from serve_app.replay import units
from serve_app.replay.records import Record
from serve_app.wire import EnergyTag, WindowRecord

J_PER_WH = 3600.0


class RunMetrics(BaseModel):
    """Metrics of one model on one split, or averaged over ``n_splits`` splits (``split == "mean"``)."""

    model_config = ConfigDict(frozen=True)

    model: str
    split: str
    n_splits: int = 1
    n_requests: int
    n_texts: int
    n_texts_planned: int | None = None
    """The texts the run was to replay (``run.json``: each split's ``n_test``, over every split it
    lists); ``n_texts`` below it is an incomplete run (e.g. killed): its energy covers fewer texts.
    ``None`` when a split does not record its size (a ``--test-file`` run)."""
    n_errors: int
    accuracy: float
    accuracy_std: float | None = None
    macro_f1: float
    majority_accuracy: float | None
    gain_pp: float | None
    energy_j: float | None
    energy_wh: float | None
    energy_wh_std: float | None = None
    energy_missing: int
    energy_source: str
    energy_scope: str = "unknown"
    measured: bool
    uncertainty_j: float | None
    domains_j: dict[str, float]
    j_per_request: float | None
    j_per_text: float | None
    wh_per_1k: float | None
    duration_s: float
    avg_power_w: float | None
    accuracy_per_wh: float | None
    carbon_g_per_kwh: float | None
    co2e_g: float | None
    parameters: int | None
    trainable_parameters: int | None = None
    cegi: float | None
    cegi_note: str | None = None
    cegi_all_parameters: float | None = None
    metered_j: float | None = None
    window_attributed_j: float | None = None
    idle_j: float | None = None
    codecarbon_kwh: float | None = None
    codecarbon_co2e_g: float | None = None
    latency_p50_s: float | None
    latency_p90_s: float | None
    latency_p99_s: float | None
    server_latency_p50_s: float | None
    throughput_rps: float | None
    retried: int
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    j_per_prompt_token: float | None = None
    j_per_output_token: float | None = None
    steady_requests: int = 0
    steady_window_s: float | None = None
    steady_j_per_request: float | None = None
    steady_j_per_output_token: float | None = None


def macro_f1(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Unweighted mean F1 over the gold labels; a ``None`` prediction is wrong for every label."""
    labels = sorted(set(gold))
    f1s = []
    for lab in labels:
        tp = sum(1 for g, p in zip(gold, predicted, strict=True) if g == lab and p == lab)
        fp = sum(1 for g, p in zip(gold, predicted, strict=True) if g != lab and p == lab)
        fn = sum(1 for g, p in zip(gold, predicted, strict=True) if g == lab and p != lab)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def combine_sources(sources: Iterable[str]) -> tuple[str, bool]:
    """One label for a set of tag sources and whether the figure is wholly measured."""
    s = sorted(set(sources))
    if not s:
        return "unavailable", False
    measured = all(x in MEASURED_SOURCES for x in s)
    return (s[0] if len(s) == 1 else "mixed:" + "+".join(s)), measured


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def _session_duration_s(records: Sequence[Record]) -> float:
    by_session: dict[str, list[Record]] = {}
    for r in records:
        by_session.setdefault(r.session, []).append(r)
    return sum(max(r.done_unix_s for r in rs) - min(r.sent_unix_s for r in rs) for rs in by_session.values())


def run_uncertainty_j(
    tags: Sequence[EnergyTag], complete: bool, windows_j: float | None = None
) -> float | None:
    """The uncertainty of the tags' sum (module doc): per busy stretch, not per request, or the replay
    windows' bound ``windows_j`` when smaller. ``complete``: every request of the run has a tag with a
    figure."""
    us = [t.uncertainty_j for t in tags if t.uncertainty_j is not None]
    if not us:
        return None
    starts = [t.attribution.stretch_starts if t.attribution else None for t in tags]
    if not complete or len(us) < len(tags) or None in starts:
        return float(sum(us))
    # a stretch's ends shift by the meters' edge bound, not by one short window's physical cap
    edges = [t.uncertainty_j if t.edge_uncertainty_j is None else t.edge_uncertainty_j for t in tags]
    stretches = min(sum(us), sum(s for s in starts if s is not None) * max(e for e in edges if e is not None))
    return float(stretches if windows_j is None else min(stretches, windows_j))


def physical_cap_j(records: Sequence[Record]) -> float | None:
    """The most the devices behind the tagged records' figures can draw over the run (J): per
    session, from the first tagged request sent to the last one answered (every request's window lies
    within its own send and answer) plus the longest time a tag's figure can hold beyond its window
    (``EnergyTag.span_s - window_s``: a counter read as it is, a remote lag); x the devices' maximum
    power (``EnergyTag.max_power_w``: per replica the largest its tags state, summed over the
    replicas; replicas that share a node's counters count them twice, which only widens the cap).
    None when a tagged record lacks either figure."""
    tagged = [(r, r.energy) for r in records if r.energy is not None and r.energy.joules is not None]
    if not tagged:
        return None
    most_w: dict[str, float] = {}
    sessions: dict[str, tuple[float, float, float]] = {}
    for r, tag in tagged:
        if tag.max_power_w is None or tag.span_s is None or tag.attribution is None:
            return None
        most_w[tag.replica] = max(most_w.get(tag.replica, 0.0), tag.max_power_w)
        extra_s = max(tag.span_s - tag.attribution.window_s, 0.0)
        first, last, slack = sessions.get(r.session, (r.sent_unix_s, r.done_unix_s, 0.0))
        sessions[r.session] = (min(first, r.sent_unix_s), max(last, r.done_unix_s), max(slack, extra_s))
    span_s = sum(last - first + slack for first, last, slack in sessions.values())
    return sum(most_w.values()) * span_s


def capped_uncertainty_j(
    uncertainty_j: float | None, energy_j: float | None, cap_j: float | None
) -> float | None:
    """``uncertainty_j`` of ``energy_j`` capped by physics (module doc): the energy lies in
    ``[0, cap_j]``, so it is at most ``max(energy_j, cap_j - energy_j)`` away from the figure."""
    if uncertainty_j is None or energy_j is None or cap_j is None:
        return uncertainty_j
    return min(uncertainty_j, max(energy_j, cap_j - energy_j))


def _windows_uncertainty_j(windows: Sequence[WindowRecord]) -> float | None:
    """The replay windows' bounds summed (``replay.window``), None unless every window has one."""
    bounds = [w.section("energy_delta", "uncertainty_j") for w in windows]
    return None if not bounds or None in bounds else sum(b for b in bounds if b is not None)


def _covering(windows: Sequence[WindowRecord], records: Sequence[Record]) -> Sequence[WindowRecord]:
    """``windows`` when every session with records has a window line, else none: a killed session
    writes no line, and the other sessions' windows alone would pass for the whole split's."""
    return windows if {r.session for r in records} <= {w.session for w in windows} else ()


def _window_sum(windows: Sequence[WindowRecord], section: str, key: str) -> float | None:
    """``key`` of ``section`` summed over the windows; None unless every window has it."""
    vals = [w.section(section, key) for w in windows]
    return None if not vals or None in vals else float(sum(v for v in vals if v is not None))


def _delta_sum(windows: Sequence[WindowRecord], key: str) -> float | None:
    """``key`` of the windows' ``/v1/energy`` deltas summed; None unless every window has it, or when a
    replica restarted during one (``reset``): its counters began again at zero, so the delta lacks
    what it drew before the restart and would pass a lower bound off as the window's energy."""
    if any((w.energy_delta or {}).get("reset") for w in windows):
        return None
    return _window_sum(windows, "energy_delta", key)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def split_metrics(
    records: Sequence[Record],
    windows: Sequence[WindowRecord] = (),
    majority_label: str | None = None,
    parameters: int | None = None,
    carbon_g_per_kwh: float | None = None,
    trainable_parameters: int | None = None,
) -> RunMetrics:
    """Metrics of one (model, split) from its records (pure). See the module doc for definitions."""
    if not records:
        raise ValueError("no records")
    models = {r.model for r in records}
    splits = {r.split for r in records}
    if len(models) != 1 or len(splits) != 1:
        raise ValueError(f"records of one (model, split) expected, got {models} x {splits}")
    recs = sorted(records, key=lambda r: r.request_index)
    gold = [g for r in recs for g in r.gold]
    pred: list[str | None] = []
    for r in recs:
        pred.extend(r.predicted if r.ok and r.predicted is not None else [None] * len(r.gold))
    n_texts = len(gold)
    accuracy = sum(1 for g, p in zip(gold, pred, strict=True) if g == p) / n_texts
    majority_accuracy = (
        None if majority_label is None else sum(1 for g in gold if g == majority_label) / n_texts
    )

    tagged = [r.energy for r in recs if r.energy is not None and r.energy.joules is not None]
    tagged_texts = sum(len(r.gold) for r in recs if r.energy is not None and r.energy.joules is not None)
    energy_j = float(sum(t.joules for t in tagged if t.joules is not None)) if tagged else None
    source, measured = combine_sources(t.source for t in tagged)
    gaps = sum(1 for t in tagged if METER_GAP in t.flags)  # a figure without the outage's energy
    if tagged and (len(tagged) < len(recs) or gaps):
        source += " (partial)"
    windows = _covering(windows, recs)
    domains: dict[str, float] = {}
    for t in tagged:
        for d, v in t.domains_j.items():
            domains[d] = domains.get(d, 0.0) + float(v)
    uncertainty_j = capped_uncertainty_j(
        run_uncertainty_j(tagged, len(tagged) == len(recs), _windows_uncertainty_j(windows)),
        energy_j,
        physical_cap_j(recs),
    )

    duration_s = _session_duration_s(recs)
    energy_wh = None if energy_j is None else energy_j / J_PER_WH
    co2e_g = None if energy_wh is None or carbon_g_per_kwh is None else energy_wh / 1000 * carbon_g_per_kwh
    gain_pp = None if majority_accuracy is None else 100.0 * (accuracy - majority_accuracy)
    cegi, cegi_note = units.cegi(co2e_g, gain_pp, trainable_parameters)
    cegi_all, _ = units.cegi(co2e_g, gain_pp, parameters or None)
    ok_lat = [r.latency_s for r in recs if r.ok and r.latency_s is not None]
    srv_lat = [r.server_latency_s for r in recs if r.ok and r.server_latency_s is not None]
    ptoks = [t for r in recs for t in (r.prompt_tokens or []) if t is not None]
    gtoks = [t for r in recs for t in (r.generated_tokens or []) if t is not None]
    cc_kwh = _window_sum(windows, "codecarbon", "energy_kwh")
    cc_kg = _window_sum(windows, "codecarbon", "emissions_kg")
    return RunMetrics(
        model=recs[0].model,
        split=recs[0].split,
        n_requests=len(recs),
        n_texts=n_texts,
        n_errors=sum(1 for r in recs if not r.ok),
        accuracy=accuracy,
        macro_f1=macro_f1(gold, pred),
        majority_accuracy=majority_accuracy,
        gain_pp=gain_pp,
        energy_j=energy_j,
        energy_wh=energy_wh,
        energy_missing=len(recs) - len(tagged) + gaps,
        energy_source=source,
        energy_scope=units.energy_scope(sorted(domains), [t.scope for t in tagged]),
        measured=measured,
        uncertainty_j=uncertainty_j,
        domains_j=domains,
        j_per_request=_div(energy_j, len(tagged)),
        j_per_text=_div(energy_j, tagged_texts),
        wh_per_1k=_div(None if energy_wh is None else energy_wh * 1000, tagged_texts),
        duration_s=duration_s,
        avg_power_w=_div(energy_j, duration_s),
        accuracy_per_wh=_div(accuracy, energy_wh),
        carbon_g_per_kwh=carbon_g_per_kwh,
        co2e_g=co2e_g,
        parameters=parameters,
        trainable_parameters=trainable_parameters,
        cegi=cegi,
        cegi_note=cegi_note,
        cegi_all_parameters=cegi_all,
        metered_j=_delta_sum(windows, "metered_j"),
        window_attributed_j=_delta_sum(windows, "attributed_j"),
        idle_j=_delta_sum(windows, "idle_j"),
        codecarbon_kwh=cc_kwh,
        codecarbon_co2e_g=None if cc_kg is None else cc_kg * 1000,
        latency_p50_s=_pct(ok_lat, 50),
        latency_p90_s=_pct(ok_lat, 90),
        latency_p99_s=_pct(ok_lat, 99),
        server_latency_p50_s=_pct(srv_lat, 50),
        throughput_rps=_div(float(len(recs)), duration_s),
        retried=sum(1 for r in recs if r.attempts > 1),
        prompt_tokens=sum(ptoks) if ptoks else None,
        generated_tokens=sum(gtoks) if gtoks else None,
        j_per_prompt_token=units.per_token(recs, "prompt"),
        j_per_output_token=units.per_token(recs, "output"),
        **units.steady_figures(recs),
    )


def _mean(xs: Iterable[float | int | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(vals)) if vals else None


def _std(xs: Iterable[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def _mean_of_all(values: Sequence[float | None]) -> float | None:
    """The mean when every split has a value, else None."""
    return None if None in values else _mean(values)


def _sum_of_all(values: Sequence[int | None]) -> int | None:
    """The sum when every split has a value, else None."""
    return None if None in values else sum(v for v in values if v is not None)


def _mean_cegi_note(per_split: Sequence[RunMetrics]) -> str | None:
    """Why the mean CEGI is n/a: the splits' reason when all share it, else on how many splits and why."""
    notes = [m.cegi_note or "n/a" for m in per_split if m.cegi is None]
    if not notes:
        return None
    if len(notes) == len(per_split) and len(set(notes)) == 1:
        return notes[0]
    return f"n/a on {len(notes)} of {len(per_split)} splits: {'; '.join(sorted(set(notes)))}"


def average_over_splits(per_split: Sequence[RunMetrics]) -> RunMetrics:
    """The mean over splits of one model (pure). Optional figures average the splits that have them,
    except CEGI: n/a on a split without a gain, its mean over the other splits would hide the losses,
    so it is given only when every split has one. Counts (requests, texts, errors, missing tags,
    retries) are summed; sources are combined."""
    if not per_split:
        raise ValueError("no splits")
    if len({m.model for m in per_split}) != 1:
        raise ValueError("average_over_splits takes the splits of one model")
    sums = {"n_requests", "n_texts", "n_errors", "energy_missing", "retried", "steady_requests"}
    fixed = {
        "model",
        "split",
        "n_splits",
        "energy_source",
        "energy_scope",
        "cegi",
        "cegi_note",
        "cegi_all_parameters",
        "trainable_parameters",
        "measured",
        "domains_j",
        "accuracy_std",
        "energy_wh_std",
        "parameters",
        "n_texts_planned",
        "accuracy_per_wh",
    }
    data: dict[str, Any] = {}
    for name in RunMetrics.model_fields:
        if name in fixed:
            continue
        vals = [getattr(m, name) for m in per_split]
        if name in sums:
            data[name] = sum(vals)
        elif name in ("prompt_tokens", "generated_tokens"):
            m = _mean(vals)
            data[name] = None if m is None else round(m)
        else:
            m = _mean(vals)
            data[name] = m if m is not None or name not in ("accuracy", "macro_f1", "duration_s") else 0.0
    labels = {m.energy_source for m in per_split}
    parts = {p for lab in labels for p in lab.replace(" (partial)", "").removeprefix("mixed:").split("+")}
    src_label, measured = combine_sources(parts - {"unavailable"})
    if len(labels) == 1:
        src_label = labels.pop()
    elif any("partial" in lab or lab == "unavailable" for lab in labels):
        src_label += " (partial)"
    # over the splits with energy, as energy_j's mean: the components must add up to it
    with_energy = [sm for sm in per_split if sm.energy_j is not None]
    domains: dict[str, float] = {}
    for sm in with_energy:
        for d, v in sm.domains_j.items():
            domains[d] = domains.get(d, 0.0) + v / len(with_energy)
    return RunMetrics(
        model=per_split[0].model,
        split="mean",
        n_splits=len(per_split),
        n_texts_planned=_sum_of_all([m.n_texts_planned for m in per_split]),
        energy_source=src_label,
        measured=measured,
        domains_j=domains,
        accuracy_std=_std([m.accuracy for m in per_split]),
        energy_wh_std=_std([m.energy_wh for m in per_split]),
        parameters=per_split[0].parameters,
        trainable_parameters=per_split[0].trainable_parameters,
        energy_scope="/".join(sorted({m.energy_scope for m in per_split})),
        cegi=_mean_of_all([m.cegi for m in per_split]),
        cegi_note=_mean_cegi_note(per_split),
        cegi_all_parameters=_mean_of_all([m.cegi_all_parameters for m in per_split]),
        # as CEGI: a split without energy (every request failed) has none, and the mean over the other
        # splits would drop its accuracy while the accuracy beside it counts it (a run whose second
        # split failed read as efficient as one that answered every text)
        accuracy_per_wh=_mean_of_all([m.accuracy_per_wh for m in per_split]),
        **data,
    )
