"""RAPL energy counters from the Linux powercap sysfs tree (Intel ``intel-rapl``, AMD ``amd-rapl``).

Layout read (``root`` defaults to ``/sys/class/powercap``)::

    intel-rapl:0/name                  "package-0"
    intel-rapl:0/energy_uj             cumulative energy, µJ, wraps at max_energy_range_uj
    intel-rapl:0/max_energy_range_uj   counter range, µJ
    intel-rapl:0:0/name                "dram" (subzones "core"/"uncore" are inside the package: skipped)
    intel-rapl:0/constraint_N_power_limit_uw, constraint_N_max_power_uw, enabled
                                       the zone's power limits (PL1, PL2, ...), µW: optional

Counter keys: ``cpu:<package name>`` for a package zone and ``dram:<package name>`` for its ``dram``
subzone (``cpu:package-0``, ``dram:package-0``). Top-level zones that are not packages (``psys``,
the duplicate ``intel-rapl-mmio`` tree) are skipped: they overlap the packages and would double-count.

Units: sysfs gives µJ; every figure leaving this module is in J (cumulative since an arbitrary
origin) and s (monotonic clock). Wrap-around is undone with a running offset per zone: a value below
the previous one is one wrap when the zone could have drawn the rest of its range and the new value
since the last read (at most its most power, below, over the time between the reads plus one update
period: ``counters.Limits.bound_j``), so ``read()`` must be called at least once per wrap period
(``max_energy_range_uj`` / power: about an hour at 70 W on common parts; the sampler reads every
``sample_period_s``). Any other backward step is no wrap; read as one, a step back of a few µJ would
claim the zone's whole range (hundreds of kJ) for one interval. A new value the zone could have drawn
since the last read is a restart (a package taken offline and back): the zone's offset goes back to
0, so its cumulative value is the new one, near zero, which the consumers' ``counters.counter_step``
takes as a restart (the interval's energy is the new value). Any other (a glitch mid-range) is passed
on as read, below the last, and ``counter_step`` holds the old value until the counter passes it.

A zone's most power (``MeterInfo.max_power_w``, W) is the largest of its ``constraint_N_max_power_uw``
and, when its limits are enforced (``enabled`` is 1), of its ``constraint_N_power_limit_uw``: the
package's power controller holds its draw under those over each limit's time window (milliseconds for
PL2). A zone that names none has only the generic bound of ``counters.MAX_POWER_W``.

Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable by root only; an unreadable file raises
`MeterError` naming the path, never a silent 0 J.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
from dataclasses import dataclass

from serve_app.energy.base import MeterError, MeterInfo, Reading, now_s
from serve_app.energy.counters import Limits

DEFAULT_ROOT = "/sys/class/powercap"
RAPL_RESOLUTION_J = 1e-6
"""Nominal resolution (J): the sysfs unit is 1 µJ. The hardware energy status unit is coarser
(typically 2^-14 J ≈ 61 µJ for packages, 15.3 µJ for server DRAM); sysfs does not expose it."""
RAPL_UPDATE_PERIOD_S = 0.001
"""Nominal counter refresh period (s): RAPL MSRs update about every 1 ms (Intel SDM)."""

_UJ_PER_J = 1e6
_UW_PER_W = 1e6
_TOP_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)$")
_SUB_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+):(\d+)$")


@dataclass
class _Zone:
    """One powercap zone and its wrap state. Units: µJ (raw), J (offset folded in on read)."""

    key: str
    energy_path: str
    max_range_uj: int
    last_uj: int | None = None
    offset_uj: int = 0
    wraps: int = 0


def _read_text(path: str) -> str:
    """Read a small sysfs attribute; any failure becomes `MeterError` naming the path."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except PermissionError as e:
        raise MeterError(
            f"RAPL file {path} is not readable ({e.strerror}); since Linux 5.10 energy_uj is root-only: "
            "run the replica as root or grant read access (e.g. a udev rule)"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise MeterError(f"RAPL file {path} could not be read: {e}") from e


def _read_uj(path: str) -> int:
    """Read an integer µJ attribute (``energy_uj``, ``max_energy_range_uj``)."""
    text = _read_text(path)
    try:
        value = int(text)
    except ValueError as e:
        raise MeterError(f"RAPL file {path} holds {text!r}, not an integer of µJ") from e
    if value < 0:
        raise MeterError(f"RAPL file {path} holds a negative value {value}")
    return value


def zone_max_power_w(zone_dir: str) -> float | None:
    """The most power a zone's limits allow (module doc), W; None when the zone names none. The
    constraint files are optional metadata: one that cannot be read or parsed is skipped."""
    enforced = _optional_text(os.path.join(zone_dir, "enabled")) == "1"
    values = []
    for name in os.listdir(zone_dir):
        kind = re.fullmatch(r"constraint_\d+_(max_power|power_limit)_uw", name)
        if kind and (kind.group(1) == "max_power" or enforced):
            text = _optional_text(os.path.join(zone_dir, name))
            if text is not None and text.isdigit() and int(text) > 0:
                values.append(int(text) / _UW_PER_W)
    return max(values) if values else None


def _optional_text(path: str) -> str | None:
    try:
        return _read_text(path)
    except MeterError:
        return None


def discover_zones(root: str) -> list[tuple[str, str]]:
    """List ``(counter key, zone directory)`` for every package zone and its ``dram`` subzone.

    Raises `MeterError` when ``root`` is missing or holds no package zone, or a ``name`` file
    cannot be read. Sorted by key, so two meters on one host agree.
    """
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise MeterError(f"no powercap tree at {root}: {e}") from e
    packages: dict[tuple[str, str], str] = {}  # (vendor, N) -> package name
    zones: list[tuple[str, str]] = []
    for entry in entries:
        m = _TOP_ZONE.match(entry)
        if not m:
            continue
        name = _read_text(os.path.join(root, entry, "name"))
        if not name.startswith("package"):
            continue  # psys and friends overlap the packages
        packages[(m.group(1), m.group(2))] = name
        zones.append((f"cpu:{name}", os.path.join(root, entry)))
    for entry in entries:
        m = _SUB_ZONE.match(entry)
        if not m or (m.group(1), m.group(2)) not in packages:
            continue
        if _read_text(os.path.join(root, entry, "name")) == "dram":
            zones.append((f"dram:{packages[(m.group(1), m.group(2))]}", os.path.join(root, entry)))
    if not zones:
        raise MeterError(f"no RAPL package zone (intel-rapl:N / amd-rapl:N) under {root}")
    return sorted(zones)


class RaplMeter:
    """Cumulative CPU package and DRAM energy from RAPL. Units: J (cumulative), s (monotonic).

    ``read()`` is thread-safe: files are read and wrap state updated under one lock, so readings
    taken by concurrent threads are monotonic in both time and value (the ledger relies on it), but
    where a counter itself stepped back (a restart or a glitch, module doc).
    """

    def __init__(self, root: str = DEFAULT_ROOT, node: str = "") -> None:
        self._root = root
        self._lock = threading.Lock()
        zones = discover_zones(root)
        self._zones = [
            _Zone(key, os.path.join(path, "energy_uj"), _read_uj(os.path.join(path, "max_energy_range_uj")))
            for key, path in zones
        ]
        max_w = {key: w for key, path in zones if (w := zone_max_power_w(path)) is not None}
        for z in self._zones:
            if z.max_range_uj <= 0:
                raise MeterError(f"RAPL zone {z.key} under {root} reports max_energy_range_uj=0")
        self._info = MeterInfo(
            source="rapl",
            devices=tuple(z.key for z in self._zones),
            resolution_j=RAPL_RESOLUTION_J,
            update_period_s=RAPL_UPDATE_PERIOD_S,
            node=node or socket.gethostname(),
            max_power_w=max_w,
            notes=(
                "powercap sysfs energy_uj (µJ); resolution 1e-6 J is the sysfs unit (hardware unit is "
                "coarser, ~61 µJ); update period ~1 ms nominal; wrap-around undone per zone"
            ),
            extra={f"max_energy_range_j:{z.key}": f"{z.max_range_uj / _UJ_PER_J:.6f}" for z in self._zones},
        )
        self._limits = Limits(slack_s=RAPL_UPDATE_PERIOD_S, slack_j=RAPL_RESOLUTION_J, key_max_power_w=max_w)
        self._last_t_s: float | None = None

    @property
    def info(self) -> MeterInfo:
        return self._info

    @property
    def wraps(self) -> dict[str, int]:
        """Wrap-arounds undone so far, per counter key."""
        with self._lock:
            return {z.key: z.wraps for z in self._zones}

    def read(self) -> Reading:
        """Read every zone. Units: J (cumulative, wrap-corrected), s. Raises `MeterError`."""
        with self._lock:
            raw = [_read_uj(z.energy_path) for z in self._zones]  # all or nothing: no partial update
            t_s = now_s()
            dt_s = 0.0 if self._last_t_s is None else t_s - self._last_t_s
            self._last_t_s = t_s
            energy_j: dict[str, float] = {}
            for z, value_uj in zip(self._zones, raw, strict=True):
                if z.last_uj is not None and value_uj < z.last_uj:
                    self._step_back(z, value_uj, dt_s)
                z.last_uj = value_uj
                energy_j[z.key] = (value_uj + z.offset_uj) / _UJ_PER_J
            return Reading(t_s=t_s, energy_j=energy_j, source="rapl")

    def _step_back(self, z: _Zone, value_uj: int, dt_s: float) -> None:
        """Set ``z``'s offset for a value below its last one over ``dt_s``: a wrap, a restart, or a
        glitch left to the consumers (module doc)."""
        assert z.last_uj is not None
        bound_j = self._limits.bound_j(z.key, dt_s)
        if (z.max_range_uj - z.last_uj + value_uj) / _UJ_PER_J <= bound_j:
            z.offset_uj += z.max_range_uj
            z.wraps += 1
        elif value_uj / _UJ_PER_J <= bound_j:
            z.offset_uj = 0

    def close(self) -> None:
        """Nothing to release: files are opened per read."""


@functools.lru_cache(maxsize=8)
def rapl_available(root: str = DEFAULT_ROOT) -> bool:
    """Whether a `RaplMeter` on ``root`` can be built and read (every zone readable). Cached per root;
    ``rapl_available.cache_clear()`` forgets. False when no zone exists or any is unreadable."""
    try:
        meter = RaplMeter(root)
        meter.read()
    except MeterError:
        return False
    meter.close()
    return True
