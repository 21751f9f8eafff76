"""The benchmarks' statistics for comparing two arms measured in pairs (two apps in one round, two
engines on one set of texts): intervals that keep each pair together, and the verdict read from them.
Pure Python; `tests/unit/test_bench_stats_review.py` checks them on numbers whose answer is known."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable


def paired_bootstrap_ci(
    stat: Callable[[list[float], list[float]], float],
    app: list[float],
    anchor: list[float],
    reps: int = 2000,
    seed: int = 0,
) -> list[float]:
    """``[stat, low, high]``: ``stat`` of two samples and its 95 % bootstrap interval, for samples whose
    i-th values were measured together (one request to each app, in the same pass over the apps): a
    resample draws indices and keeps both values of each drawn pair. Resampling each list on its own
    would let one resample take the slow stretches of the run (a busy second of the host, a slower
    round) while the other does not, and count the spread both apps shared as a difference between
    them: an interval too wide for the design."""
    if len(app) != len(anchor):
        raise ValueError(f"paired samples differ in length: {len(app)} and {len(anchor)}")
    rng = random.Random(seed)
    index = range(len(app))
    boots = []
    for _ in range(reps):
        drawn = rng.choices(index, k=len(app))
        boots.append(stat([app[i] for i in drawn], [anchor[i] for i in drawn]))
    boots.sort()
    return [stat(app, anchor), boots[reps // 40], boots[reps - 1 - reps // 40]]


def added_p50_ci(app: list[float], anchor: list[float]) -> list[float]:
    """``[added p50, low, high]`` (ms): the difference of the two samples' medians and its 95 %
    bootstrap interval over pairs (``app[i]`` and ``anchor[i]`` measured in one pass over the apps, as
    `single_text_latencies_ms` sends them). A lone request's latency spreads over tens of ms here, so
    a 1 ms target needs this interval beside the figure."""
    return paired_bootstrap_ci(lambda a, b: statistics.median(a) - statistics.median(b), app, anchor)


def median_rank_interval(n: int, level: float = 0.95) -> tuple[int, float]:
    """``(k, coverage)``: from the k-th smallest to the k-th largest of ``n`` independent values is an
    interval that holds their distribution's median with probability ``coverage`` (the binomial count of
    values below the median; no assumption on the distribution). The largest k whose coverage is at
    least ``level``; where even min to max falls short (``n`` <= 5 at 95 %), k = 1 and its coverage.
    A bootstrap of the median over a handful of rounds cannot do better than min to max, and calls it
    95 % when it is 75 % (3 rounds) or 94 % (5); over 6 to 10 it picks values inside the exact ranks."""
    if n < 1:
        raise ValueError("no rounds")

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return k, coverage(k)


def round_ratio_ci(app: list[float], anchor: list[float]) -> list[float]:
    """``[median ratio, low, high, coverage]``: each round's throughput of ``app`` over ``anchor`` (both
    ran in the same round, seconds apart, so an hour when the host is slower moves both), the median over
    rounds and the exact order-statistic interval over rounds (`median_rank_interval`) with the
    probability that it holds the median: 95 % or more from 6 rounds on, below with fewer (then min to
    max). The ratio of the two apps' medians, printed first, can pair one app's fast round with the
    other's slow one."""
    ratios = sorted(a / b for a, b in zip(app, anchor, strict=True))
    k, coverage = median_rank_interval(len(ratios))
    return [statistics.median(ratios), ratios[k - 1], ratios[-k], coverage]


def verdict(low: float, high: float, target: float, at_least: bool, coverage: float = 0.95) -> str:
    """``met`` when the whole interval is on the target's side, ``MISSED`` when none of it is, else
    ``not told apart at this run's spread``; no verdict from an interval that holds the figure with
    less than 95 % probability (``coverage``: too few rounds)."""
    if coverage < 0.95:
        return f"not told apart: too few rounds for a 95 % interval (min to max holds {coverage:.1%})"
    inside = (low >= target) if at_least else (high <= target)
    outside = (high < target) if at_least else (low > target)
    return "met" if inside else "MISSED" if outside else "not told apart at this run's spread"
