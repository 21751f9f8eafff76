"""Energy against duration and devices (the study's regression), by numpy least squares (pure).

Model: ``energy_wh = b0 + b1 * duration_s + b2 * devices + b3 * duration_s * devices``, with
``devices`` the number of GPUs a model ran on. Terms whose column does not vary in the data (e.g.
``devices`` when every run is CPU-only) are dropped, and the fit says which terms it kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TERMS = ("intercept", "duration_s", "devices", "duration_s:devices")


@dataclass(frozen=True)
class Fit:
    terms: tuple[str, ...]
    coefficients: tuple[float, ...]
    r2: float | None
    n: int

    def predict(self, duration_s: np.ndarray, devices: np.ndarray) -> np.ndarray:
        cols = _columns(np.asarray(duration_s, float), np.asarray(devices, float))
        return np.column_stack([cols[t] for t in self.terms]) @ np.array(self.coefficients)

    def formula(self) -> str:
        parts = [
            f"{c:.4g}" if t == "intercept" else f"{c:.4g}*{t}"
            for t, c in zip(self.terms, self.coefficients, strict=True)
        ]
        return "energy_wh = " + " + ".join(parts).replace("+ -", "- ")


def _columns(d: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    return {"intercept": np.ones_like(d), "duration_s": d, "devices": g, "duration_s:devices": d * g}


def fit_energy_duration(energy_wh: np.ndarray, duration_s: np.ndarray, devices: np.ndarray) -> Fit:
    """Least-squares fit of the model above; ``r2`` is ``None`` with fewer points than terms + 1."""
    y = np.asarray(energy_wh, float)
    cols = _columns(np.asarray(duration_s, float), np.asarray(devices, float))
    terms = [t for t in TERMS if t == "intercept" or np.ptp(cols[t]) > 0]
    if "devices" not in terms:
        terms = [t for t in terms if t != "duration_s:devices"]
    x = np.column_stack([cols[t] for t in terms])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    ss_res = float(np.sum((y - x @ coef) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = None if len(y) <= len(terms) or ss_tot == 0 else 1.0 - ss_res / ss_tot
    return Fit(tuple(terms), tuple(float(c) for c in coef), r2, len(y))


def pareto_front(energy: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats (energy <= and accuracy >=, one strictly)."""
    e, a = np.asarray(energy, float), np.asarray(accuracy, float)
    mask = np.ones(len(e), bool)
    for i in range(len(e)):
        dominated = (e <= e[i]) & (a >= a[i]) & ((e < e[i]) | (a > a[i]))
        mask[i] = not dominated.any()
    return mask
