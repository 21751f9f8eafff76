"""Grid carbon intensity per country, to turn energy (Wh) into CO2-equivalent (g).

Source, in order:
1. CodeCarbon's packaged per-country data (``codecarbon/data/private_infra/global_energy_mix.json``,
   the ``carbon_intensity`` field, gCO2e/kWh, the year it names) when ``codecarbon`` is installed.
   The file is read directly: CodeCarbon itself is not imported (slow, and it starts no tracker here).
2. Otherwise the small table ``DEFAULT_G_PER_KWH`` below, copied from that same file (year 2023),
   for a handful of countries, and CodeCarbon's world average (475 gCO2e/kWh) for any other.

Units: g CO2e per kWh; country codes are ISO 3166-1 alpha-3 (``DEU``, ``FRA``, ``USA``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WORLD_AVERAGE_G_PER_KWH = 475.0
"""CodeCarbon's world average (IEA Global Energy & CO2 Status Report 2019)."""

DEFAULT_G_PER_KWH: dict[str, float] = {
    "DEU": 380.95,
    "FRA": 56.039,
    "GBR": 237.589,
    "USA": 369.473,
    "CHN": 582.317,
    "IND": 713.441,
    "SWE": 40.695,
    "NOR": 30.08,
    "POL": 661.926,
    "AUT": 110.812,
    "CHE": 34.843,
    "NLD": 267.622,
}
"""Fallback table, gCO2e/kWh, from CodeCarbon 3.x ``global_energy_mix.json`` (year 2023)."""

_ENERGY_MIX = Path("data") / "private_infra" / "global_energy_mix.json"


@dataclass(frozen=True)
class CarbonIntensity:
    """A country's grid carbon intensity. Units: g CO2e per kWh."""

    country: str
    g_per_kwh: float
    source: str
    """``codecarbon:<year>``, ``default-table:2023`` or ``world-average``."""

    def co2e_g(self, energy_wh: float) -> float:
        """CO2-equivalent in grams for ``energy_wh`` watt-hours."""
        return energy_wh / 1000.0 * self.g_per_kwh


@lru_cache(maxsize=1)
def _codecarbon_mix() -> dict[str, dict[str, object]] | None:
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / _ENERGY_MIX
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


def carbon_intensity(country: str = "DEU", use_codecarbon: bool = True) -> CarbonIntensity:
    """The grid carbon intensity of ``country`` (ISO alpha-3), from CodeCarbon's data where possible."""
    code = country.strip().upper()
    mix = _codecarbon_mix() if use_codecarbon else None
    if mix is not None and code in mix:
        entry = mix[code]
        value = entry.get("carbon_intensity")
        if isinstance(value, (int, float)) and value > 0:
            return CarbonIntensity(code, float(value), f"codecarbon:{entry.get('year', '?')}")
    if code in DEFAULT_G_PER_KWH:
        return CarbonIntensity(code, DEFAULT_G_PER_KWH[code], "default-table:2023")
    return CarbonIntensity(code, WORLD_AVERAGE_G_PER_KWH, "world-average")
