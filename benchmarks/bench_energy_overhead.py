"""What metering costs a replica, from one run.

Sections:
1. ``request-path`` (in-process): per simulated request, the time of ``meter.read() + ledger.begin``
   plus ``meter.read() + ledger.end``, for each meter (``estimate``, ``rapl`` where readable, and a
   constant ``null`` meter that isolates the ledger's own cost) versus an empty loop. Units: µs.
2. ``sampler``: the sampler thread at ``--period-s`` for ``--sampler-s`` seconds with the estimate
   meter; its CPU time per wall second (``time.thread_time`` inside the loop, and the OS's per-thread
   figure via psutil). Units: ms of CPU per s, µs per sample.
End to end (throughput and p50 through the router with metering on vs off) is measured by
``benchmarks/bench_serve.py``.

Usage: ``.venv/bin/python benchmarks/bench_energy_overhead.py [-n 20000] [--out PATH]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._out import add_out_argument, write_result  # noqa: E402
from serve_app.energy.base import Meter, MeterError, MeterInfo, Reading
from serve_app.energy.estimate import EstimateMeter
from serve_app.energy.ledger import Ledger
from serve_app.energy.rapl import DEFAULT_ROOT, RaplMeter, rapl_available
from serve_app.energy.sampler import Sampler


@dataclass(frozen=True)
class PathResult:
    """Request-path cost of one meter. Units: µs per request (begin + end, both reads included)."""

    meter: str
    requests: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    overhead_p50_us: float  # p50 minus the empty loop's p50


@dataclass(frozen=True)
class SamplerResult:
    """Sampler thread cost. Units: s, ms of CPU per wall second, µs of CPU per sample."""

    meter: str
    period_s: float
    wall_s: float
    samples: int
    cpu_ms_per_s: float  # from Sampler.cpu_s (thread_time around each read + observe)
    os_thread_cpu_ms_per_s: float | None  # from psutil's per-thread times (includes the wait loop)
    cpu_us_per_sample: float


@dataclass(frozen=True)
class BenchResult:
    request_path: list[PathResult]
    sampler: SamplerResult | None


class ConstantMeter:
    """A meter that returns one constant reading: what is left is the ledger's own cost."""

    _READING = Reading(t_s=0.0, energy_j={"cpu:null": 0.0}, source="estimate")

    @property
    def info(self) -> MeterInfo:
        return MeterInfo(source="estimate", devices=("null",), resolution_j=0.0, update_period_s=0.0)

    def read(self) -> Reading:
        return self._READING

    def close(self) -> None:
        pass


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def time_request_path(meter: Meter | None, n: int) -> list[int]:
    """Per-request ns of (read + begin) + (read + end); ``meter=None`` times the empty loop."""
    clock = time.perf_counter_ns
    out = [0] * n
    if meter is None:
        for i in range(n):
            t0 = clock()
            t1 = clock()
            t2 = clock()
            t3 = clock()
            out[i] = (t1 - t0) + (t3 - t2)
        return out
    ledger = Ledger(meter.read())
    for i in range(n):
        rid = f"req-{i}"
        t0 = clock()
        ledger.begin(rid, meter.read(), 1.0)
        t1 = clock()
        t2 = clock()  # the prediction would run here
        ledger.end(rid, meter.read())
        t3 = clock()
        out[i] = (t1 - t0) + (t3 - t2)
    return out


def bench_request_path(meters: dict[str, Callable[[], Meter | None]], n: int) -> list[PathResult]:
    results: list[PathResult] = []
    base_p50 = 0.0
    for name, make in meters.items():
        meter = make()
        time_request_path(meter, min(n, 1000))  # warm-up
        ns = sorted(time_request_path(meter, n))
        if meter is not None:
            meter.close()
        p50 = _percentile(ns, 0.5)
        if meter is None:
            base_p50 = p50
        results.append(
            PathResult(
                name,
                n,
                p50,
                _percentile(ns, 0.9),
                _percentile(ns, 0.99),
                statistics.fmean(ns) / 1000.0,
                p50 - base_p50,
            )  # fmt: skip
        )
    return results


def _os_thread_cpu_s(native_id: int | None) -> float | None:
    if native_id is None:
        return None
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return None


def bench_sampler(period_s: float, duration_s: float) -> SamplerResult:
    sampler = Sampler(EstimateMeter(), period_s)
    sampler.start()
    thread = next(t for t in threading.enumerate() if t.name == "accuwatt-sampler")
    native_id = thread.native_id
    os0 = _os_thread_cpu_s(native_id)
    readings0 = sampler.ledger.totals().readings
    t0 = time.monotonic()
    time.sleep(duration_s)
    wall_s = time.monotonic() - t0
    os1 = _os_thread_cpu_s(native_id)
    samples = sampler.ledger.totals().readings - readings0
    cpu_s = sampler.cpu_s
    sampler.stop()
    os_ms = (os1 - os0) / wall_s * 1000 if os0 is not None and os1 is not None else None
    return SamplerResult(
        meter="estimate",
        period_s=period_s,
        wall_s=wall_s,
        samples=samples,
        cpu_ms_per_s=cpu_s / wall_s * 1000,
        os_thread_cpu_ms_per_s=os_ms,
        cpu_us_per_sample=cpu_s / max(samples, 1) * 1e6,
    )


def _meters(rapl_root: str) -> dict[str, Callable[[], Meter | None]]:
    meters: dict[str, Callable[[], Meter | None]] = {
        "none": lambda: None,
        "constant (ledger only)": ConstantMeter,
        "estimate": EstimateMeter,
    }
    if rapl_available(rapl_root):
        meters["rapl"] = lambda: RaplMeter(rapl_root)
    return meters


def print_report(result: BenchResult, rapl_root: str) -> None:
    print(f"request path: read+begin + read+end per request, {result.request_path[0].requests} requests (µs)")
    print(f"  {'meter':<20}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}{'p50 - none':>12}")
    for r in result.request_path:
        print(f"  {r.meter:<20}{r.p50_us:>9.2f}{r.p90_us:>9.2f}{r.p99_us:>9.2f}{r.mean_us:>9.2f}"
              f"{r.overhead_p50_us:>12.2f}")  # fmt: skip
    if not any(r.meter == "rapl" for r in result.request_path):
        print(f"  (rapl: no readable zone under {rapl_root})")
    s = result.sampler
    if s is not None:
        os_part = (
            f", OS thread {s.os_thread_cpu_ms_per_s:.3f} ms/s" if s.os_thread_cpu_ms_per_s is not None else ""
        )
        print(f"sampler ({s.meter}, every {s.period_s * 1000:.0f} ms, {s.wall_s:.1f} s, {s.samples} samples): "
              f"{s.cpu_ms_per_s:.3f} ms CPU per s{os_part}; {s.cpu_us_per_sample:.1f} µs CPU per sample")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("-n", "--requests", type=int, default=20000, help="simulated requests per meter")
    p.add_argument("--period-s", type=float, default=0.05, help="sampler period (s)")
    p.add_argument("--sampler-s", type=float, default=5.0, help="how long the sampler runs (s); 0 skips")
    p.add_argument("--rapl-root", default=DEFAULT_ROOT, help="powercap sysfs root")
    add_out_argument(p, "bench_energy_overhead")
    args = p.parse_args(argv)
    try:
        path = bench_request_path(_meters(args.rapl_root), args.requests)
        sampler = bench_sampler(args.period_s, args.sampler_s) if args.sampler_s > 0 else None
    except MeterError as e:
        print(f"meter failed: {e}", file=sys.stderr)
        return 1
    result = BenchResult(request_path=path, sampler=sampler)
    print_report(result, args.rapl_root)
    written = write_result(args, asdict(result))
    print(f"result in {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
