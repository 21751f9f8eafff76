"""The study's method next to ours: a CodeCarbon ``OfflineEmissionsTracker`` around a replay window.

CodeCarbon samples the whole machine (RAPL or its CPU power table, RAM at a flat W/GB, NVML GPUs) every
``measure_power_secs`` seconds; figures are kWh and kg CO2e. It is optional: without ``codecarbon``
installed the window reports ``{"error": ...}`` and the replay goes on.
"""

from __future__ import annotations

from typing import Any

from serve_app.energy.crosscheck import start_tracker


class CodeCarbonWindow:
    def __init__(self, country: str = "DEU", measure_power_secs: float = 1.0) -> None:
        self.country = country
        self.measure_power_secs = measure_power_secs
        self._tracker: Any = None
        self._error: str | None = None

    def start(self) -> None:
        try:
            self._tracker = start_tracker("accuwatt-replay", self.country, self.measure_power_secs)
        except Exception as exc:  # not installed, or no usable backend on this machine
            self._tracker, self._error = None, f"{type(exc).__name__}: {exc}"

    def stop(self) -> dict[str, Any]:
        if self._tracker is None:
            return {"error": self._error or "not started"}
        try:
            emissions_kg = self._tracker.stop()
            data = self._tracker.final_emissions_data
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "energy_kwh": float(getattr(data, "energy_consumed", 0.0)),
            "emissions_kg": float(emissions_kg or 0.0),
            "cpu_kwh": float(getattr(data, "cpu_energy", 0.0)),
            "gpu_kwh": float(getattr(data, "gpu_energy", 0.0)),
            "ram_kwh": float(getattr(data, "ram_energy", 0.0)),
            "duration_s": float(getattr(data, "duration", 0.0)),
            "cpu_power_w": float(getattr(data, "cpu_power", 0.0)),
        }
