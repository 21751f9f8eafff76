"""The benchmarks' statistics with numbers whose right answer is known (pure Python: no Ray, no HTTP).

``bench_serve.py``'s pooled added p50 and per-round throughput ratio (issue 17's targets: p50 within
1 ms, throughput >= 0.95x) and ``bench_llm_modes.py``'s verdict on "score or choice >= 3x less time than
paper at full batch" and Serve >= 0.9x the offline engine, read per pair of sets (issue 15).
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._stats import added_p50_ci, round_ratio_ci, verdict  # noqa: E402


def spread_latencies_ms(n: int, seed: int) -> list[float]:
    """Single-text latencies spreading over tens of ms, as on the project's host."""
    rng = random.Random(seed)
    return [20.0 + 40.0 * rng.random() for _ in range(n)]


def test_added_p50_interval_keeps_pairs_together() -> None:
    """Every metered request took exactly 0.5 ms more than the bare one sent beside it: the added p50
    is 0.5 ms with no doubt, and the 1 ms target is met. Resampling each app's list on its own (pairs
    broken apart) gave an interval of about -2.6 to +3.7 ms and "not told apart"."""
    anchor = spread_latencies_ms(300, seed=1)
    app = [a + 0.5 for a in anchor]
    added, low, high = added_p50_ci(app, anchor)
    assert added == pytest.approx(0.5)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    assert verdict(low, high, 1.0, False) == "met"


def test_added_p50_interval_shares_a_slow_stretch() -> None:
    """A slow stretch of the host that both apps saw (the second half of the run, +15 ms to each pair)
    is no difference between them: the interval stays near the true 0.3 ms."""
    anchor = spread_latencies_ms(400, seed=2)
    anchor = [a + (15.0 if i >= 200 else 0.0) for i, a in enumerate(anchor)]
    rng = random.Random(3)
    app = [a + 0.3 + rng.uniform(-0.2, 0.2) for a in anchor]
    added, low, high = added_p50_ci(app, anchor)
    assert low <= added <= high
    assert high - low < 1.0
    assert verdict(low, high, 1.0, False) == "met"


def test_added_p50_refuses_unpaired_samples() -> None:
    """Samples of different lengths cannot be pairs of requests sent back to back."""
    with pytest.raises(ValueError, match="differ in length"):
        added_p50_ci([1.0, 2.0, 3.0], [1.0, 2.0])


def test_added_p50_still_wide_when_pairs_differ_widely() -> None:
    """Pairs that do not move together still give a wide interval: pairing does not invent certainty."""
    anchor = spread_latencies_ms(300, seed=4)
    app = [x + 0.5 for x in spread_latencies_ms(300, seed=5)]
    added, low, high = added_p50_ci(app, anchor)
    assert added == pytest.approx(statistics.median(app) - statistics.median(anchor))
    assert high - low > 3.0


def test_round_interval_of_five_rounds_is_not_95_percent() -> None:
    """Five rounds, all at 0.96-1.00x: min to max holds the median ratio with probability
    1 - 2/2**5 = 93.75 %, so no 95 % interval exists and the target is not judged met. The bootstrap of
    the median gave min to max, called it 95 % and said "met"."""
    app = [960.0, 970.0, 980.0, 990.0, 1000.0]
    anchor = [1000.0] * 5
    median, low, high, coverage = round_ratio_ci(app, anchor)
    assert (median, low, high) == (pytest.approx(0.98), pytest.approx(0.96), pytest.approx(1.0))
    assert coverage == pytest.approx(1 - 2 / 2**5)
    assert verdict(low, high, 0.95, True, coverage) != "met"
    assert round_ratio_ci([1.0] * 3, [1.0] * 3)[3] == pytest.approx(0.75)  # the default --rounds 3


def test_round_interval_uses_exact_ranks() -> None:
    """Ten rounds with ratios 0.91 .. 1.00: the exact distribution-free 95 % interval for the median is
    from the 2nd smallest to the 2nd largest (coverage 1 - 2 * 11 / 1024); the bootstrap gave 0.93 to
    0.985, inside those ranks (about 89 %)."""
    app = [910.0 + 10.0 * i for i in range(10)]
    median, low, high, coverage = round_ratio_ci(app, [1000.0] * 10)
    assert median == pytest.approx(0.955)
    assert (low, high) == (pytest.approx(0.92), pytest.approx(0.99))
    assert coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert verdict(low, high, 0.95, True, coverage) == "not told apart at this run's spread"
    six = round_ratio_ci([960.0, 970.0, 980.0, 990.0, 1000.0, 1010.0], [1000.0] * 6)
    assert (six[1], six[2]) == (pytest.approx(0.96), pytest.approx(1.01))
    assert verdict(six[1], six[2], 0.95, True, six[3]) == "met"
    assert verdict(0.90, 0.94, 0.95, True, six[3]) == "MISSED"


def test_paper_target_not_judged_with_fewer_in_flight() -> None:
    """The target is at full batch: with 16 of 100 texts in the engine, a 3.5x is no verdict on it."""
    from benchmarks.bench_llm_modes import paper_target

    ratios = {"score@warm": {"time_less_x": 3.5}, "choice@warm": {"time_less_x": 2.0}}
    best, said = paper_target(ratios, "warm", 16, 100)
    assert best == pytest.approx(3.5)
    assert said.startswith("not judged")
    assert paper_target(ratios, "warm", None, 100) == (pytest.approx(3.5), "met")
    assert paper_target(ratios, "warm", 100, 100)[1] == "met"  # all texts in flight: full batch


def test_paper_target_not_missed_when_not_measured() -> None:
    """``--modes paper``: neither score nor choice ran, so nothing missed the target."""
    from benchmarks.bench_llm_modes import paper_target

    best, said = paper_target({"paper@cold": {"time_less_x": 1.0}}, "cold", None, 100)
    assert best is None
    assert said.startswith("not measured")
    low = {"score@cold": {"time_less_x": 2.9}}
    assert paper_target(low, "cold", None, 100) == (pytest.approx(2.9), "MISSED")


def serve_pairs(ratios: list[float], seed: int = 3) -> Any:
    """A Serve comparison whose i-th pair ran at ``ratios[i]`` of an in-process speed that moves
    between 11 and 20 texts/s from pair to pair, as the host's did."""
    from benchmarks.bench_llm_modes import ServeComparison

    rng = random.Random(seed)
    inproc = [11.0 + 9.0 * rng.random() for _ in ratios]
    serve = [r * i for r, i in zip(ratios, inproc, strict=True)]
    return ServeComparison(
        mode="score",
        cache="warm",
        texts=100,
        inprocess_texts_per_s=inproc,
        serve_texts_per_s=serve,
        serve_vs_inprocess_ratio=ratios,
        serve_start_s=[40.0],
    )


def test_serve_target_read_per_pair_not_across_the_hosts_speed() -> None:
    """Serve at 0.95x of the offline engine in every pair, while the host's speed moved by 80 % between
    pairs: the median pair ratio is 0.95 with no doubt, and one pair hit by a busy second (0.5x) moves
    neither it nor the verdict; the pooled ratio (all texts over all time) is 0.95 when every pair is."""
    even = serve_pairs([0.95] * 12)
    assert even.median_ratio[:3] == pytest.approx([0.95, 0.95, 0.95])
    assert even.pooled_ratio == pytest.approx([0.95, 0.95, 0.95])
    assert even.verdict == "met"
    hiccup = serve_pairs([0.95] * 11 + [0.5])
    assert hiccup.median_ratio[0] == pytest.approx(0.95)
    assert hiccup.verdict == "met"
    assert hiccup.pooled_ratio[0] < 0.95


def test_serve_target_missed_and_undecided() -> None:
    """Every pair at 0.85x: missed. Pairs spread from 0.80 to 1.02 around a median above 0.9: the
    interval reaches below 0.9, so no verdict either way; two pairs give no 95 % interval at all."""
    assert serve_pairs([0.85] * 12).verdict == "MISSED"
    spread = serve_pairs([0.80, 0.84, 0.88, 0.91, 0.93, 0.94, 0.95, 0.96, 0.97, 0.99, 1.0, 1.02])
    assert spread.median_ratio[0] == pytest.approx(0.945)
    assert spread.verdict == "not told apart at this run's spread"
    assert serve_pairs([1.2, 1.3]).verdict.startswith("not told apart: too few rounds")
