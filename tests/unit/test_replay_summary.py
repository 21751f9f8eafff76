import numpy as np
import pytest

from serve_app.replay.records import EnergyTag, Record
from serve_app.replay.summary import average_over_splits, combine_sources, macro_f1, split_metrics
from serve_app.replay.window import energy_delta, window_uncertainty_j
from serve_app.wire import Attribution, EnergyView, WindowRecord

pytestmark = pytest.mark.unit


def rec(
    i,
    gold,
    pred,
    joules=None,
    source="rapl",
    session="a",
    sent=100.0,
    total=1.0,
    attempts=1,
    error=None,
    domains=None,
    split="s0",
    latency=0.1,
):
    energy = (
        None
        if joules is None and source is None
        else EnergyTag(
            joules=joules,
            source=source,
            measured=source == "rapl",
            domains_j=domains or {},
            uncertainty_j=0.1,
        )
    )
    return Record(
        model="m",
        split=split,
        request_index=i,
        request_id=f"r{i}",
        session=session,
        text_ids=[f"t:{i}:{k}" for k in range(len(gold))],
        gold=gold,
        predicted=None if error else pred,
        sent_unix_s=sent,
        total_s=total,
        latency_s=latency,
        energy=energy,
        attempts=attempts,
        error=error,
        status=None if error else 200,
    )


def test_macro_f1_by_hand():
    # A: tp=1 fp=1 fn=1 -> F1 = 2/4 = 0.5 ; B: tp=1 fp=1 fn=1 -> 0.5 ; C (gold only): tp=0 -> 0
    gold = ["A", "A", "B", "B", "C"]
    pred = ["A", "B", "B", "A", None]
    assert macro_f1(gold, pred) == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_combine_sources():
    assert combine_sources(["rapl", "rapl"]) == ("rapl", True)
    assert combine_sources(["estimate"]) == ("estimate", False)
    assert combine_sources(["rapl", "estimate"]) == ("mixed:estimate+rapl", False)
    assert combine_sources([]) == ("unavailable", False)


def test_split_metrics_hand_computed():
    records = [
        rec(
            0, ["A", "B"], ["A", "B"], joules=36.0, sent=100.0, total=1.0, domains={"cpu": 30.0, "dram": 6.0}
        ),
        rec(
            1,
            ["A", "A"],
            ["A", "B"],
            joules=72.0,
            sent=100.5,
            total=1.5,
            attempts=2,
            domains={"cpu": 60.0, "dram": 12.0},
        ),
        rec(2, ["B"], None, joules=None, source=None, sent=101.0, total=2.0, error="boom"),
        # a second session (resumed run): 10 s later, lasting 1 s
        rec(3, ["A"], ["A"], joules=0.0, session="b", sent=200.0, total=1.0, domains={"cpu": 0.0}),
    ]
    windows = [
        WindowRecord(
            model="m",
            split="s0",
            session="a",
            start_unix_s=100.0,
            end_unix_s=102.0,
            sent=3,
            energy_delta={"metered_j": 150.0, "attributed_j": 108.0, "idle_j": 42.0},
            codecarbon={"energy_kwh": 0.0001, "emissions_kg": 0.00004},
        ),
        WindowRecord(
            model="m",
            split="s0",
            session="b",
            start_unix_s=200.0,
            end_unix_s=201.0,
            sent=1,
            energy_delta={"metered_j": 0.0, "attributed_j": 0.0, "idle_j": 0.0},
            codecarbon={"energy_kwh": 0.0, "emissions_kg": 0.0},
        ),
    ]
    m = split_metrics(records, windows, majority_label="A", parameters=2_000_000, carbon_g_per_kwh=400.0)
    # texts: A B | A A | B | A -> gold 6 texts; correct: A,B,A,(B wrong),(B failed),A = 4
    assert m.n_texts == 6 and m.n_requests == 4 and m.n_errors == 1
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.majority_accuracy == pytest.approx(4 / 6)  # gold A in 4 of 6
    assert m.gain_pp == pytest.approx(0.0)
    assert m.cegi is None  # no gain over the majority class
    assert m.energy_j == pytest.approx(108.0)
    assert m.energy_wh == pytest.approx(0.03)
    # the failed request has no figure: the tags present are measured, the sum is partial
    assert m.energy_missing == 1 and m.energy_source == "rapl (partial)" and m.measured
    assert m.domains_j == pytest.approx({"cpu": 90.0, "dram": 18.0})
    # per-request units over the 3 tagged requests and their 5 texts
    assert m.j_per_request == pytest.approx(36.0) and m.j_per_text == pytest.approx(21.6)
    assert m.wh_per_1k == pytest.approx(6.0)
    # session a: 100.0 -> max(101, 102, 103) = 3 s; session b: 1 s
    assert m.duration_s == pytest.approx(4.0)
    assert m.avg_power_w == pytest.approx(27.0)
    assert m.accuracy_per_wh == pytest.approx((4 / 6) / 0.03)
    assert m.co2e_g == pytest.approx(0.03 / 1000 * 400.0)
    assert m.idle_j == 42.0 and m.metered_j == 150.0 and m.window_attributed_j == 108.0
    assert m.codecarbon_kwh == pytest.approx(0.0001) and m.codecarbon_co2e_g == pytest.approx(0.04)
    assert m.retried == 1 and m.throughput_rps == pytest.approx(1.0)
    assert m.latency_p50_s == pytest.approx(0.1)


def test_a_runs_uncertainty_counts_busy_stretches_not_requests():
    """Four back-to-back requests in one busy stretch (the first opened it in its replica's and the
    router's ledger): the edges they share cancel in the sum, the stretch's two ends remain."""

    def run(starts, uncertainties, failed=False):
        recs = []
        for i, (s, u) in enumerate(zip(starts, uncertainties, strict=True)):
            r = rec(i, ["A"], ["A"], joules=1.0)
            assert r.energy is not None
            att = Attribution(
                rule="texts", weight=1.0, window_s=0.1, intervals=1, max_sharers=2, stretch_starts=s
            )
            recs.append(
                r.model_copy(
                    update={"energy": r.energy.model_copy(update={"uncertainty_j": u, "attribution": att})}
                )
            )
        if failed:
            recs.append(rec(len(recs), ["A"], ["B"], error="HTTP 500", source=None))
        return split_metrics(recs, [], "A").uncertainty_j

    assert run([2, 0, 0, 0], [0.5, 0.6, 0.7, 0.5]) == pytest.approx(2 * 0.7)
    # each request alone (concurrency 1): every edge unpaired, the sum is the smaller
    assert run([2, 2, 2, 2], [0.5, 0.6, 0.7, 0.5]) == pytest.approx(2.3)
    # a failed request's edges are not in the sum; a tag that does not count stretches: the sum
    assert run([2, 0, 0, 0], [0.5, 0.6, 0.7, 0.5], failed=True) == pytest.approx(2.3)
    assert run([2, None, 0, 0], [0.5, 0.6, 0.7, 0.5]) == pytest.approx(2.3)


def test_a_windows_bound_adds_its_shares_misses_moves_and_end_edges_or_is_unknown():
    """Per replica and for the router: missed and adjusted increases plus the edge error at each end.
    A share that does not report them, a replica or router that restarted, another router: unknown."""

    def view(rep, overhead=None, replicas=("r",)):
        row = {"source": "estimate", "metered_j": 1.0, **rep}
        return EnergyView.model_validate(
            {
                "deployments": {"m": {"replicas": dict.fromkeys(replicas, row)}},
                "serving_overhead": overhead or {},
            }
        )

    rep0 = {"missed_j": 10.0, "adjusted_j": 4.0, "edge_error_j": 0.5}
    rep1 = {"missed_j": 12.0, "adjusted_j": 4.5, "edge_error_j": 0.25}
    router0 = {"metered_j": 3.0, "group": "router:7", "missed_j": 1.0, "adjusted_j": 0.0, "edge_error_j": 0.1}
    router1 = {**router0, "missed_j": 2.0, "adjusted_j": 0.2, "edge_error_j": 0.3}
    assert window_uncertainty_j(view(rep0), view(rep1), "m") == pytest.approx(2 + 0.5 + 0.5 + 0.25)
    both = window_uncertainty_j(view(rep0, router0), view(rep1, router1), "m")
    assert both == pytest.approx(3.25 + 1 + 0.2 + 0.1 + 0.3)
    assert energy_delta(view(rep0, router0), view(rep1, router1), "m")["uncertainty_j"] == both
    unknown = [
        (view({"missed_j": None, "adjusted_j": 0.0, "edge_error_j": None}), view(rep1)),  # read as is
        (view(rep0), view({**rep1, "missed_j": 1.0})),  # the replica restarted
        (view(rep0, router0), view(rep1, {**router1, "group": "router:8"})),  # another router
        (view(rep0), view(rep1, replicas=("r", "s"))),  # a replica joined
    ]
    assert [window_uncertainty_j(a, b, "m") for a, b in unknown] == [None] * 4


def test_cegi_by_hand():
    # 4 texts, training majority B (1 of 4 test texts = 25 %), accuracy 100 % -> gain 75 pp;
    # 7.2 kJ = 2 Wh -> 0.8 g at 400 g/kWh; 4 M trainable of 5 M parameters (a frozen 1 M encoder)
    records = [rec(i, [g], [g], joules=1800.0) for i, g in enumerate("AABA")]
    m = split_metrics(
        records,
        majority_label="B",
        parameters=5_000_000,
        carbon_g_per_kwh=400.0,
        trainable_parameters=4_000_000,
    )
    assert m.gain_pp == pytest.approx(75.0)
    assert m.co2e_g == pytest.approx(0.8)
    assert m.cegi == pytest.approx(0.8 / (75.0 * 4.0)) and m.cegi_note is None
    assert m.cegi_all_parameters == pytest.approx(0.8 / (75.0 * 5.0))
    assert m.energy_source == "rapl" and m.measured


def test_cegi_baseline_is_the_training_majority_not_the_test_majority():
    # test gold: A A B A (test majority A = 75 %); the training majority is B (25 % of the test texts)
    records = [rec(i, [g], ["A"], joules=1800.0) for i, g in enumerate("AABA")]
    m = split_metrics(records, majority_label="B", carbon_g_per_kwh=400.0, trainable_parameters=1_000_000)
    assert m.accuracy == pytest.approx(0.75) and m.majority_accuracy == pytest.approx(0.25)
    assert m.gain_pp == pytest.approx(50.0) and m.cegi == pytest.approx(0.8 / 50.0)
    unknown = split_metrics(records, carbon_g_per_kwh=400.0, trainable_parameters=1_000_000)
    assert unknown.majority_accuracy is None and unknown.gain_pp is None and unknown.cegi is None
    assert unknown.cegi_note == "training split's majority class unknown"


def test_zero_shot_llm_has_no_cegi_but_the_all_parameters_variant():
    records = [rec(i, [g], [g], joules=1800.0) for i, g in enumerate("AABA")]
    m = split_metrics(
        records, majority_label="B", parameters=135_000_000, carbon_g_per_kwh=400.0, trainable_parameters=0
    )
    assert m.cegi is None and m.cegi_note == "no trainable parameters (zero-shot)"
    assert m.cegi_all_parameters == pytest.approx(0.8 / (75.0 * 135.0))


def test_per_token_units_by_hand():
    records = [
        rec(0, ["A"], ["A"], joules=10.0),
        rec(1, ["B"], ["B"], joules=30.0),
        rec(2, ["A"], ["A"], joules=5.0),
    ]
    records = [
        records[0].model_copy(update={"prompt_tokens": [100], "generated_tokens": [4]}),
        records[1].model_copy(update={"prompt_tokens": [300], "generated_tokens": [16]}),
        records[2],  # no token counts: left out of the per-token figures
    ]
    m = split_metrics(records, majority_label="A")
    assert m.j_per_prompt_token == pytest.approx(40.0 / 400)
    assert m.j_per_output_token == pytest.approx(40.0 / 20)
    assert m.j_per_request == pytest.approx(45.0 / 3)
    assert m.wh_per_1k == pytest.approx(45.0 / 3600 * 1000 / 3)
    assert m.energy_scope == "unknown"  # these tags carry no domains


def test_steady_window_trims_ramp_up_and_tail():
    # one session, 20 requests sent 1 s apart each lasting 1 s: span 100.0 .. 120.0 (20 s); trimmed by
    # 10 % = 2 s at each end -> window 102 .. 118: requests sent at 102 .. 117 (16 requests)
    records = [
        rec(i, ["A"], ["A"], joules=1.0 + i, sent=100.0 + i, total=1.0).model_copy(
            update={"generated_tokens": [2]}
        )
        for i in range(20)
    ]
    m = split_metrics(records, majority_label="A")
    assert m.steady_requests == 16
    assert m.steady_window_s == pytest.approx(16.0)
    inside = [1.0 + i for i in range(2, 18)]
    assert m.steady_j_per_request == pytest.approx(sum(inside) / 16)
    assert m.steady_j_per_output_token == pytest.approx(sum(inside) / 32)
    # the ramp-up requests are cheaper here, so the steady figure differs from the whole-run one
    assert m.j_per_output_token == pytest.approx(sum(1.0 + i for i in range(20)) / 40)


def test_steady_window_needs_enough_requests():
    records = [rec(i, ["A"], ["A"], joules=1.0, sent=100.0 + i) for i in range(4)]
    m = split_metrics(records, majority_label="A")
    assert m.steady_j_per_request is None and m.steady_requests < 5


def test_energy_scope_names_the_hardware_and_the_software():
    from serve_app.replay.units import energy_scope

    assert energy_scope(["gpu"]) == "GPU only, model"
    assert energy_scope(["cpu", "dram"], ["model+serving"] * 3) == "CPU+DRAM, model+serving"
    assert energy_scope(["dram", "gpu", "cpu"], ["model"]) == "GPU+CPU+DRAM, model"
    assert energy_scope(["cpu"], ["model+serving", "model", "model+serving"]) == (
        "CPU, model (+serving on 2 of 3 requests)"
    )
    assert energy_scope([]) == "unknown"


def test_no_energy_is_absent_not_zero():
    records = [rec(0, ["A"], ["A"], joules=None, source="unavailable")]
    m = split_metrics(records)
    assert m.energy_j is None and m.energy_wh is None and m.avg_power_w is None and m.accuracy_per_wh is None
    assert m.energy_source == "unavailable" and m.co2e_g is None


def test_average_over_splits():
    s0 = split_metrics([rec(0, ["A"], ["A"], joules=3600.0, split="s0")], carbon_g_per_kwh=100.0)
    s1 = split_metrics(
        [rec(0, ["A"], ["B"], joules=7200.0, split="s1", source="estimate")], carbon_g_per_kwh=100.0
    )
    avg = average_over_splits([s0, s1])
    assert avg.split == "mean" and avg.n_splits == 2 and avg.n_texts == 2
    assert avg.accuracy == pytest.approx(0.5) and avg.energy_wh == pytest.approx(1.5)
    assert avg.energy_wh_std == pytest.approx(0.7071, rel=1e-3)
    assert avg.energy_source == "mixed:estimate+rapl" and not avg.measured
    with pytest.raises(ValueError):
        average_over_splits([])


def test_energy_delta_sums_replicas_and_handles_new_and_reset():
    before = {
        "deployments": {
            "m": {
                "replicas": {
                    "r1": {
                        "source": "rapl",
                        "metered_j": 10.0,
                        "attributed_j": 6.0,
                        "idle_j": 4.0,
                        "domains": {"metered": {"cpu": 9.0}},
                    },
                    "r2": {"source": "rapl", "metered_j": 50.0, "attributed_j": 30.0, "idle_j": 20.0},
                }
            }
        }
    }
    after = {
        "deployments": {
            "m": {
                "replicas": {
                    "r1": {
                        "source": "rapl",
                        "metered_j": 15.0,
                        "attributed_j": 9.0,
                        "idle_j": 6.0,
                        "domains": {"metered": {"cpu": 13.0}},
                    },
                    "r2": {
                        "source": "rapl",
                        "metered_j": 5.0,
                        "attributed_j": 3.0,
                        "idle_j": 2.0,
                    },  # restarted
                    "r3": {"source": "rapl", "metered_j": 1.0, "attributed_j": 1.0, "idle_j": 0.0},
                }
            }
        }
    }
    before, after = EnergyView.model_validate(before), EnergyView.model_validate(after)
    d = energy_delta(before, after, "m")
    assert d["metered_j"] == pytest.approx(5 + 5 + 1)
    assert d["attributed_j"] == pytest.approx(3 + 3 + 1)
    assert d["idle_j"] == pytest.approx(2 + 2 + 0)
    assert d["reset"] and d["replicas"] == 3 and d["domains_j"] == {"cpu": 4.0}
    assert energy_delta(before, None, "m") is None
    assert energy_delta(before, after, "other") is None


def test_energy_delta_nested_domains():
    rep = {
        "source": "estimate",
        "metered_j": 3.0,
        "attributed_j": 1.0,
        "idle_j": 2.0,
        "domains": {
            "metered": {"cpu": 2.5, "dram": 0.5},
            "attributed": {"cpu": 1.0},
            "idle": {"cpu": 1.5, "dram": 0.5},
        },
    }
    before = EnergyView.model_validate({"deployments": {"m": {"replicas": {}}}})  # the replica started after
    d = energy_delta(before, EnergyView.model_validate({"deployments": {"m": {"replicas": {"r": rep}}}}), "m")
    assert d["domains_j"] == {"cpu": 2.5, "dram": 0.5} and d["idle_domains_j"] == {"cpu": 1.5, "dram": 0.5}


def _split(name, correct, n=10, source="rapl"):
    """``n`` one-text requests of 1 J; gold A on the first half, B on the rest; ``correct`` answered right."""
    gold = ["A" if i < n // 2 else "B" for i in range(n)]
    return [
        rec(i, [g], [g if i < correct else "C"], joules=1.0, source=source, split=name)
        for i, g in enumerate(gold)
    ]


def test_mean_cegi_needs_a_cegi_on_every_split():
    """A CEGI is n/a where a split had no gain: averaging the other splits alone would report a model
    that loses on most splits with the CEGI of its one gain."""
    kw = {"majority_label": "A", "carbon_g_per_kwh": 400.0, "trainable_parameters": 1000, "parameters": 10**6}
    gain = split_metrics(_split("s0", 6), **kw)  # 60 % vs the majority's 50 %: +10 pp
    losses = [split_metrics(_split(s, 3), **kw) for s in ("s1", "s2")]  # -20 pp each
    assert gain.cegi is not None and losses[0].cegi is None
    mean = average_over_splits([gain, *losses])
    assert mean.gain_pp == pytest.approx(-10.0)
    assert mean.cegi is None and mean.cegi_all_parameters is None
    assert mean.cegi_note == "n/a on 2 of 3 splits: no gain over the training majority class"
    both = average_over_splits([gain, split_metrics(_split("s1", 8), **kw)])
    assert both.cegi == pytest.approx(np.mean([gain.cegi, split_metrics(_split("s1", 8), **kw).cegi]))
    assert both.cegi_note is None
    llm = {**kw, "trainable_parameters": 0}
    zero_shot = average_over_splits([split_metrics(_split(s, 8), **llm) for s in ("s0", "s1")])
    assert zero_shot.cegi is None and zero_shot.cegi_note == "no trainable parameters (zero-shot)"


def test_a_failed_request_leaves_a_measured_run_measured_and_units_over_the_tagged_requests():
    """A failed request (an HTTP 500) carries no tag: the run is partial, not an estimate, and its
    per-request units are over the requests that carried a figure."""
    failed = rec(9, ["B"], None, source=None, error="HTTP 500")
    m = split_metrics([*_split("s0", 9)[:9], failed])
    assert m.energy_source == "rapl (partial)" and m.energy_missing == 1 and m.measured
    assert m.energy_j == pytest.approx(9.0)
    assert m.j_per_request == pytest.approx(1.0) and m.j_per_text == pytest.approx(1.0)
    assert m.wh_per_1k == pytest.approx(9.0 / 3600 * 1000 / 9)
    estimate = split_metrics([*_split("s0", 9, source="estimate")[:9], failed])
    assert estimate.energy_source == "estimate (partial)" and not estimate.measured
    unavailable = split_metrics([rec(0, ["A"], ["A"], source=None, split="s1")])
    mean = average_over_splits([m, unavailable])
    assert mean.energy_source == "rapl (partial)" and mean.measured
    mixed = average_over_splits([m, split_metrics(_split("s1", 9, source="estimate"))])
    assert mixed.energy_source == "mixed:estimate+rapl (partial)" and not mixed.measured


def test_energy_delta_without_a_first_view_is_unknown_not_the_lifetime_totals():
    rep = {"source": "nvml", "metered_j": 1e6, "attributed_j": 1e4, "idle_j": 990_000.0}
    after = EnergyView.model_validate({"deployments": {"m": {"replicas": {"r": rep}}}})
    assert energy_delta(None, after, "m") is None
    assert energy_delta(EnergyView.model_validate({"deployments": {}}), after, "m") is None
    started = EnergyView.model_validate({"deployments": {"m": {"replicas": {}}}})
    assert energy_delta(started, after, "m")["metered_j"] == pytest.approx(1e6)  # started in between


def test_windows_count_only_when_every_session_has_its_window_line():
    """Session a was killed (no window line); session b's window covers only its own requests."""
    att = Attribution(rule="texts", weight=1.0, window_s=0.1, intervals=1, max_sharers=1, stretch_starts=1)
    recs = []
    for i in range(6):
        r = rec(i, ["A"], ["A"], joules=1.0, session="a" if i < 3 else "b", sent=100.0 + i)
        assert r.energy is not None
        recs.append(r.model_copy(update={"energy": r.energy.model_copy(update={"attribution": att})}))
    b = WindowRecord(
        model="m",
        split="s0",
        session="b",
        start_unix_s=103.0,
        end_unix_s=106.0,
        sent=3,
        energy_delta={"metered_j": 20.0, "attributed_j": 3.0, "idle_j": 17.0, "uncertainty_j": 0.001},
        codecarbon={"energy_kwh": 0.0001, "emissions_kg": 0.00004},
    )
    m = split_metrics(recs, [b])
    assert m.uncertainty_j == pytest.approx(split_metrics(recs).uncertainty_j)
    assert m.uncertainty_j == pytest.approx(0.6)  # the tags' figures, not session b's bound
    assert m.idle_j is None and m.metered_j is None and m.window_attributed_j is None
    assert m.codecarbon_kwh is None
    a = b.model_copy(update={"session": "a", "energy_delta": {**b.energy_delta, "uncertainty_j": 0.002}})
    both = split_metrics(recs, [a, b])
    assert both.uncertainty_j == pytest.approx(0.003) and both.idle_j == pytest.approx(34.0)
    no_idle = a.model_copy(update={"energy_delta": None})  # its first /v1/energy view never answered
    assert split_metrics(recs, [no_idle, b]).idle_j is None


def test_a_request_with_zero_generated_tokens_keeps_its_energy_per_token():
    """0 tokens is a count, not "no count": its energy stays in the numerator (J per output token is
    all the energy over all the tokens), and a request without counts is still left out."""
    records = [
        rec(0, ["A"], ["A"], joules=10.0).model_copy(update={"prompt_tokens": [50], "generated_tokens": [0]}),
        rec(1, ["B"], ["B"], joules=30.0).model_copy(
            update={"prompt_tokens": [150], "generated_tokens": [4]}
        ),
        rec(2, ["A"], ["A"], joules=5.0),
    ]
    m = split_metrics(records, majority_label="A")
    assert m.j_per_output_token == pytest.approx(40.0 / 4)
    assert m.j_per_prompt_token == pytest.approx(40.0 / 200)
    only_zero = split_metrics(records[:1], majority_label="A")
    assert only_zero.j_per_output_token is None  # no token at all: no figure, not a division by zero
