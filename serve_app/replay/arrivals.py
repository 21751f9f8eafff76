"""Arrival times of an open-loop replay (after vLLM's benchmark): seeded Poisson or gamma gaps.

Gaps between requests are gamma-distributed with shape ``burstiness`` and mean ``1 / rate_rps``:

- ``burstiness = 1``: exponential gaps, i.e. a Poisson process (``arrivals="poisson"`` forces this);
- ``burstiness < 1``: burstier than Poisson (coefficient of variation ``1 / sqrt(burstiness) > 1``);
- ``burstiness > 1``: more regular (CV < 1; ``inf`` would be a fixed interval).

The first request goes at ``t = 0``. Units: seconds from the start of the replay window.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ArrivalKind = Literal["poisson", "gamma"]


def gaps_s(
    n: int, rate_rps: float, kind: ArrivalKind = "poisson", burstiness: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``n`` inter-arrival gaps (s) with mean ``1 / rate_rps``; reproducible for a given ``seed``."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if not rate_rps > 0:
        raise ValueError(f"rate_rps must be > 0, got {rate_rps}")
    shape = 1.0 if kind == "poisson" else float(burstiness)
    if not shape > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    rng = np.random.default_rng(seed)
    return rng.gamma(shape, 1.0 / (rate_rps * shape), size=n)


def arrival_times_s(
    n: int, rate_rps: float | None, kind: ArrivalKind = "poisson", burstiness: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Send offsets (s) of ``n`` requests; all zero when ``rate_rps`` is ``None`` or infinite."""
    if rate_rps is None or np.isinf(rate_rps):
        return np.zeros(n)
    if n == 0:
        return np.zeros(0)
    g = gaps_s(n - 1, rate_rps, kind, burstiness, seed)
    return np.concatenate([[0.0], np.cumsum(g)])
