"""Review round 3 of the energy metering below the ledger: real processes, real ``/proc``, powercap
and ``/proc`` trees the tests write. Units: J, s, W."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.account import NodeAccount
from serve_app.energy.nodemeter import NodeEstimateMeter, node_busy_cpu_s
from serve_app.energy.procset import ProcessSetMeter
from serve_app.energy.rapl import RaplMeter
from serve_app.energy.sampler import Sampler

pytestmark = pytest.mark.unit

BURN = "while True: pass\n"
TDP_W = 3000.0  # 8 x 375 W: one busy CPU of this machine shows more than 1000 W


@pytest.fixture()
def burners() -> Iterator[list[subprocess.Popen[bytes]]]:
    """One CPU-bound process per logical CPU of this machine."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(os.cpu_count() or 1)]
    time.sleep(0.3)  # past the interpreter's start
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_a_whole_node_estimate_above_one_packages_bound_is_metered_not_dropped(
    burners: list[subprocess.Popen[bytes]],
) -> None:
    """An eight-socket node (8 x 375 W, spread over all its CPUs; this machine's CPUs stand for
    them) with no readable RAPL meters the estimate ``cpu:node``: busy CPU time of the whole node x
    TDP / cores. With the node busy it shows up to 3000 W, which is what its meter says it can show
    (``max_power_w``). The account refused every step as above the generic 1000 W bound of one CPU
    package: 0 J metered on a busy node."""
    meter = NodeEstimateMeter(cpu_tdp_w=TDP_W, cpu_cores=None, dram_w_per_gb=0.375, node="n")
    busy_before = node_busy_cpu_s()
    account = NodeAccount([meter], "n")
    busy_after_origin = node_busy_cpu_s()
    for _ in range(3):
        time.sleep(1.0)
        busy_before_tick = node_busy_cpu_s()
        account.tick()
    busy_after = node_busy_cpu_s()
    snap = account.snapshot()
    assert snap["steps"]["dropped"] == 0, snap["steps"]
    assert snap["dropped_j"] == 0.0
    cpu_j = snap["metered_by_counter_j"]["cpu:node"]
    # bracketed by this test's own reads of /proc/stat around the account's first and last reads
    # (equal when no 10 ms tick fell between two reads: the slack is float rounding of ~2e4 s x TDP)
    slack = 1e-9 * cpu_j + 1e-9
    assert meter.per_core_w * (busy_before_tick - busy_after_origin) <= cpu_j + slack
    assert cpu_j <= meter.per_core_w * (busy_after - busy_before) + slack
    assert abs(snap["closure_error_j"]) < 1e-6


def test_a_replicas_estimate_above_one_packages_bound_reaches_its_ledger(
    burners: list[subprocess.Popen[bytes]],
) -> None:
    """The same node without the account (``node_account: false``): a replica's estimate over its
    busy processes (here every CPU of the machine) shows more than 1000 W, and its ledger dropped
    every step of it as above the bound."""
    cfg = EnergyConfig(meter="estimate", cpu_tdp_w=TDP_W)
    ps = [psutil.Process(p.pid) for p in burners]

    def cpu_s() -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in ps))

    before = cpu_s()
    meter = ProcessSetMeter(cfg, [p.pid for p in burners], node="n")
    sampler = Sampler(meter, period_s=0.05)
    after_first = cpu_s()
    try:
        for _ in range(3):
            time.sleep(1.0)
            before_last = cpu_s()
            sampler.sample()
        after = cpu_s()
        totals = sampler.ledger.totals()
    finally:
        sampler.stop()
    assert totals.dropped == 0, (totals.dropped, totals.dropped_j)
    per_core_w = TDP_W / (os.cpu_count() or 1)
    tick_j = 0.01 * per_core_w * len(ps)  # /proc's CPU times count 10 ms ticks
    assert per_core_w * (before_last - after_first) - tick_j <= totals.metered_j["cpu:process"]
    assert totals.metered_j["cpu:process"] <= per_core_w * (after - before) + tick_j


def write_proc(
    root: Path, uptime_s: float, busy_ticks: int, procs: dict[int, tuple[int, str, int, int]]
) -> None:
    """A ``/proc`` tree as the kernel lays it out (man 5 proc): ``uptime``, the ``cpu`` line of
    ``stat`` and per process ``stat`` and ``cmdline``. ``procs``: PID -> (PPID, title, CPU ticks,
    start tick)."""
    (root / "uptime").write_text(f"{uptime_s:.2f} 0.00\n")
    (root / "stat").write_text(f"cpu  {busy_ticks} 0 0 100000 0 0 0 0 0 0\n")
    for d in root.iterdir():
        if d.name.isdigit() and int(d.name) not in procs:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    for pid, (ppid, title, cpu_ticks, start_tick) in procs.items():
        d = root / str(pid)
        d.mkdir(exist_ok=True)
        comm = title.split()[0][:15]
        rest = ["0"] * 40
        rest[0], rest[1], rest[11], rest[12], rest[19] = "S", str(ppid), str(cpu_ticks), "0", str(start_tick)
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
        (d / "cmdline").write_bytes(title.replace(" ", "\0").encode() + b"\0")


def write_rapl(root: Path, energy_uj: int) -> None:
    z = root / "intel-rapl:0"
    z.mkdir(parents=True, exist_ok=True)
    (z / "name").write_text("package-0\n")
    (z / "max_energy_range_uj").write_text("262143328850\n")
    (z / "energy_uj").write_text(f"{energy_uj}\n")


def test_a_reused_pid_is_a_new_process_its_cpu_time_all_in_the_interval(tmp_path: Path) -> None:
    """PID 4242 was a replica with 5 s of CPU time; within one account interval it exits and the PID
    is taken by a router (started after the last scan, 6 s of CPU on its threads since). The whole
    6 s are the router's in this interval; the account read them as the replica's process going on
    (6 - 5 = 1 s) and gave the other 5 s (and their energy) to ``other``."""
    proc, rapl = tmp_path / "proc", tmp_path / "rapl"
    proc.mkdir()
    tick = 0.01
    write_rapl(rapl, 1_000_000)
    write_proc(proc, 1000.0, 100_000, {4242: (1, "ray::ServeReplica:app:clf", 500, 90_000)})
    account = NodeAccount([RaplMeter(str(rapl), node="n")], "n", proc_root=str(proc), idle_w={"cpu": 0.0})
    write_rapl(rapl, 1_000_000 + 65_000_000)  # 65 J in the interval
    # the router started at 1000.2 s and ran 8 threads: 6 s of CPU; the node was busy 6.5 s
    write_proc(proc, 1001.0, 100_650, {4242: (1, "ray::ServeReplica:app:router", 600, 100_020)})
    time.sleep(0.2)  # 65 J in 0.2 s: under one package's bound
    account.tick()
    snap = account.snapshot()
    assert snap["groups"]["router:4242"]["cpu_s"] == pytest.approx(600 * tick)
    assert snap["groups"]["router:4242"]["j"] == pytest.approx(65.0 * 6.0 / 6.5)
    assert snap["groups"]["other"]["j"] == pytest.approx(65.0 * 0.5 / 6.5)
    assert abs(snap["closure_error_j"]) < 1e-9


def test_a_process_that_execs_a_replica_after_a_scan_is_the_replica(tmp_path: Path) -> None:
    """The raylet forks a worker, which holds the raylet's command line (and PID, and start time) until
    it execs. A scan in between cached that title for the PID, and every later scan kept it: the
    replica the process became was never its own group (here ``other``, under a raylet ``ray_system``),
    so its share was refused for good (``own_group``). Here a forked shell stands for the raylet's
    child: it waits, then execs a process titled as Ray titles a replica."""
    write_rapl(tmp_path / "rapl", 1_000_000)
    script = f'( sleep 1.0; exec -a "ray::ServeReplica:app:clf" {sys.executable} -c "$0" ) & wait'
    parent = subprocess.Popen(
        ["bash", "-c", script, "import time\nwhile True: time.sleep(0.05)\n"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not (children := psutil.Process(parent.pid).children()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child = children[0].pid
        account = NodeAccount([RaplMeter(str(tmp_path / "rapl"), node="n")], "n")  # scans it before its exec
        assert Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"bash")
        while not Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::ServeReplica:app:clf"):
            assert time.monotonic() < deadline, "no exec"
            time.sleep(0.01)
        account.tick()
        assert account.share_of_pid(child)["group"] == f"replica:{child}"
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
