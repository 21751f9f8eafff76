"""Grid carbon intensity per country, to turn energy (Wh) into CO2-equivalent (g).

Source, in order:
1. CodeCarbon's packaged per-country data (``codecarbon/data/private_infra/global_energy_mix.json``,
   the ``carbon_intensity`` field, gCO2e/kWh, the year it names) when ``codecarbon`` is installed.
   The file is read directly: CodeCarbon itself is not imported (slow, and it starts no tracker here).
2. Otherwise the small table ``DEFAULT_G_PER_KWH`` below, copied from that same file (year 2023),
   for a handful of countries.

A code in neither is refused (`UsageError`, naming the known codes): falling back to a world average
would put every CO2e and CEGI figure off by the country's difference with no sign of it in the report.
So is a code CodeCarbon lists with no figure (``CAF``: ``carbon_intensity`` 0.0), with a message
saying so (it is a real code; only the figure is missing).

Units: g CO2e per kWh; country codes are ISO 3166-1 alpha-3 (``DEU``, ``FRA``, ``USA``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from serve_app.errors import UsageError

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
    """``codecarbon:<year>`` or ``default-table:2023``."""

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


def _codecarbon_intensity(code: str, use_codecarbon: bool) -> CarbonIntensity | None:
    """``code``'s intensity in CodeCarbon's data, or None (not installed, no such code, no figure)."""
    mix = _codecarbon_mix() if use_codecarbon else None
    entry = mix.get(code) if mix is not None else None
    if entry is None:
        return None
    value = entry.get("carbon_intensity")
    if not isinstance(value, (int, float)) or value <= 0:
        return None
    return CarbonIntensity(code, float(value), f"codecarbon:{entry.get('year', '?')}")


def known_countries(use_codecarbon: bool = True) -> list[str]:
    """The codes `carbon_intensity` has a figure for, sorted."""
    mix = (_codecarbon_mix() if use_codecarbon else None) or {}
    return sorted(set(DEFAULT_G_PER_KWH) | {c for c in mix if _codecarbon_intensity(c, use_codecarbon)})


def carbon_intensity(country: str = "DEU", use_codecarbon: bool = True) -> CarbonIntensity:
    """The grid carbon intensity of ``country`` (ISO alpha-3), from CodeCarbon's data where possible;
    an unknown code is refused (module doc)."""
    code = country.strip().upper()
    found = _codecarbon_intensity(code, use_codecarbon)
    if found is not None:
        return found
    if code in DEFAULT_G_PER_KWH:
        return CarbonIntensity(code, DEFAULT_G_PER_KWH[code], "default-table:2023")
    mix = _codecarbon_mix() if use_codecarbon else None
    entry = mix.get(code) if mix is not None else None
    if isinstance(entry, dict):  # a country CodeCarbon lists, with no usable figure (CAF: 0.0)
        raise UsageError(
            f"--country {country!r}: CodeCarbon has no grid carbon intensity for it "
            f"(carbon_intensity {entry.get('carbon_intensity')!r} in its data, year {entry.get('year', '?')}), "
            "and accuwatt has no option to give one; CO2e and CEGI would be 0 or wrong, so choose a "
            f"country with a figure, e.g. {', '.join(sorted(DEFAULT_G_PER_KWH))}"
        )
    known = known_countries(use_codecarbon)
    raise UsageError(
        f"--country {country!r}: no grid carbon intensity for it; give an ISO 3166-1 alpha-3 code, "
        f"e.g. {', '.join(sorted(DEFAULT_G_PER_KWH))} ({len(known)} known)"
    )
