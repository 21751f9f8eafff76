"""CodeCarbon beside the node account: a second tool's figure for the same node and window.

With ``energy.codecarbon: true`` each node's energy agent runs one CodeCarbon ``OfflineEmissionsTracker``
(the study's tool: RAPL where readable, else its CPU power table x load; RAM at a flat W/GB; NVML GPUs)
from the first account that asks for it. Each account joins the cross-check with its own origin (its
metered energy and CodeCarbon's at that moment), and its snapshot carries ``codecarbon``: CodeCarbon's
energy since then beside what the account metered since then, and their ratio.

What the ratio means depends on the node: where both read RAPL they measure the same counters, so
they should agree up to CodeCarbon's sampling; where no sensor exists both are estimates built
differently (CodeCarbon: its TDP table x CPU load; the account: TDP / cores x busy CPU time), so the
ratio says how far apart two estimates are, not which is right. Units: J (CodeCarbon's kWh x 3.6e6).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

J_PER_KWH = 3.6e6
MEASURE_S = 15.0
"""CodeCarbon's sampling period (its default, and the study's setting); every snapshot also measures
the time since its last sample, so a window's tail is never missing."""


def start_tracker(project: str, country: str = "DEU", measure_s: float = MEASURE_S) -> Any:
    """A started CodeCarbon ``OfflineEmissionsTracker`` (no files written); raises when CodeCarbon is
    not installed or has no usable backend here. The one place accuwatt builds a tracker."""
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(
        country_iso_code=country,
        measure_power_secs=measure_s,
        save_to_file=False,
        log_level="error",
        project_name=project,
    )
    tracker.start()
    return tracker


class NodeCodeCarbon:
    """One CodeCarbon tracker for the node (started at construction; failures are kept as ``error``)."""

    def __init__(self, measure_s: float = MEASURE_S) -> None:
        self._lock = threading.Lock()
        self._tracker: Any = None
        self.error: str | None = None
        self.started_s = time.monotonic()
        try:  # the country only changes CodeCarbon's CO2 figure; energy is what is compared
            self._tracker = start_tracker("accuwatt-node", measure_s=measure_s)
        except Exception as exc:  # not installed, or no usable backend on this node
            self._tracker, self.error = None, f"{type(exc).__name__}: {exc}"[:300]

    def energy_j(self) -> dict[str, float]:
        """CodeCarbon's cumulative energy since it started: ``total``, ``cpu``, ``ram``, ``gpu`` (J);
        empty when it is not running."""
        if self._tracker is None:
            return {}
        with self._lock:
            try:
                self._tracker.flush()  # measures the power since its last scheduled sample
                t = self._tracker
                return {
                    "total": float(t._total_energy.kWh) * J_PER_KWH,
                    "cpu": float(t._total_cpu_energy.kWh) * J_PER_KWH,
                    "ram": float(t._total_ram_energy.kWh) * J_PER_KWH,
                    "gpu": float(t._total_gpu_energy.kWh) * J_PER_KWH,
                }
            except Exception as exc:  # a version without these totals: say so, once
                self.error = f"{type(exc).__name__}: {exc}"[:300]
                return {}


def cross_check(cc: NodeCodeCarbon, origin: dict[str, float], account_metered_j: float) -> dict[str, Any]:
    """The ``codecarbon`` section of an account snapshot: CodeCarbon's energy and the account's metered
    energy, both since ``origin`` (``{"account": J, "total": J, "cpu": J, ...}`` taken when the account
    joined), and CodeCarbon / account."""
    now = cc.energy_j()
    if not now:
        return {"error": cc.error or "CodeCarbon gave no figure"}
    cc_j = {k: v - origin.get(k, 0.0) for k, v in now.items()}
    acc_j = account_metered_j - origin.get("account", 0.0)
    return {
        "source": "codecarbon",
        "energy_j": cc_j["total"],
        "cpu_j": cc_j["cpu"],
        "ram_j": cc_j["ram"],
        "gpu_j": cc_j["gpu"],
        "account_metered_j": acc_j,
        "ratio": cc_j["total"] / acc_j if acc_j > 0 else None,
        "since_s": time.monotonic() - origin.get("t_s", cc.started_s),
        "error": cc.error,
    }
