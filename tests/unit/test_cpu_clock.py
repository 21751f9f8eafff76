"""A process's CPU clock (``procs.process_cpu_s``) has the resolution a 20 ms request needs: the
kernel's per-process CPU clock, not ``/proc/<pid>/stat``'s 10 ms ticks. Checked on a real process the
test keeps busy, against psutil's reading of its ticks."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from serve_app.energy.procs import process_cpu_s

pytestmark = pytest.mark.unit
SPIN = "while True:\n    pass\n"


def test_a_busy_process_clock_moves_by_less_than_a_tick() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        deadline = time.monotonic() + 30
        while (process_cpu_s(proc.pid) or 0.0) < 0.05:
            assert time.monotonic() < deadline, "the busy process got no CPU"
            time.sleep(0.01)
        steps = []
        for _ in range(20):
            a = process_cpu_s(proc.pid) or 0.0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.002:  # 2 ms of wall time
                pass
            steps.append((process_cpu_s(proc.pid) or 0.0) - a)
        # on two cores the spinner shares a core with this loop at worst: it gains 0 to 2 ms per
        # step, never a whole 10 ms tick; with tick counts most steps would read 0 and some 10 ms
        assert sum(s > 0 for s in steps) >= 10, steps
        assert max(steps) < 0.008, steps
        ticks = sum(psutil.Process(proc.pid).cpu_times()[:2])  # the same CPU time, in 10 ms ticks
        assert abs((process_cpu_s(proc.pid) or 0.0) - ticks) < 0.05
    finally:
        proc.kill()
        proc.wait()
    assert process_cpu_s(proc.pid) is None  # gone: no figure, not an error
