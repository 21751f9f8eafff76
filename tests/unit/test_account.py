"""The node account against real processes (titled as Ray titles them) and a RAPL sysfs tree the test
writes and advances: each counter is split once, closure is exact, and the figures match what the
test itself wrote or read from /proc. Units: J, s, W."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.account import NodeAccount
from serve_app.energy.base import MeterError, MeterInfo, Reading
from serve_app.energy.ledger import Ledger
from serve_app.energy.nodemeter import NodeEstimateMeter
from serve_app.energy.procs import Proc, deployment_of, group_of, own_group, process_cpu_s
from serve_app.energy.rapl import RaplMeter
from serve_app.energy.sampler import meter_limits
from serve_app.energy.share import EDGE_TICKS, MIN_EDGE_TICKS, AccountShareMeter
from serve_app.energy.tag import make_tag
from serve_app.energy.window import ReplicaEnergy
from serve_app.replay.summary import run_uncertainty_j
from serve_app.replay.window import window_uncertainty_j
from serve_app.wire import DeploymentEnergy, EnergyView
from serve_app.wire import ReplicaEnergy as ReplicaRow

pytestmark = pytest.mark.unit

# a duty-cycled spinner: ~20 % of a core, so nine of them fit a shared 2-core machine
SPIN = "import time\nwhile True:\n    t = time.perf_counter()\n    while time.perf_counter() - t < 0.004: pass\n    time.sleep(0.016)\n"
TITLES = [f"ray::ServeReplica:app:model{i}" for i in range(7)] + [
    "ray::ServeReplica:app:router",
    "ray::ProxyActor",
]


def spawn(title: str, code: str = SPIN, wait: bool = False) -> subprocess.Popen[bytes]:
    """A real process whose /proc/<pid>/cmdline starts with ``title`` (as Ray's setproctitle does);
    ``wait``: until it does (an account that scans it before would keep the shell's title)."""
    proc = subprocess.Popen(
        ["bash", "-c", f'exec -a "{title}" {sys.executable} -c "$0"', code], start_new_session=True
    )
    deadline = time.monotonic() + 30
    while wait and not Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(title.encode()):
        assert time.monotonic() < deadline, f"{title}: not titled"
        time.sleep(0.01)
    return proc


@pytest.fixture()
def titled() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [spawn(t) for t in TITLES]
    time.sleep(0.3)  # exec done, titles visible
    yield procs
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(timeout=10)


def make_rapl(root: Path) -> dict[str, Path]:
    zones = {}
    for d, name in (("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "dram"), ("intel-rapl:1", "psys")):
        z = root / d
        z.mkdir(parents=True)
        (z / "name").write_text(name + "\n")
        (z / "energy_uj").write_text("1000000\n")
        (z / "max_energy_range_uj").write_text("262143328850\n")
        zones[name] = z / "energy_uj"
    return zones


def test_titles_to_groups() -> None:
    assert own_group("ray::ServeReplica:default:tfidf-lr", 7) == "replica:7"
    assert own_group("ray::ServeReplica:default:tfidf-lr.handle_request_with_rejection", 7) == "replica:7"
    assert deployment_of("ray::ServeReplica:default:tfidf-lr.initialize_and_get_metadata") == "tfidf-lr"
    assert own_group("ray::ServeReplica:default:router.handle_request", 8) == "router:8"
    assert own_group("ray::ProxyActor", 9) == "proxy"
    assert own_group("ray::ServeController", 10) == "ray_system"
    assert own_group("/usr/bin/ray/core/src/ray/raylet/raylet --x", 11) == "ray_system"
    assert own_group("python -m pytest", 12) is None
    procs = {
        1: Proc(1, 0, "init", 0.0),
        10: Proc(10, 1, "raylet", 0.0),
        20: Proc(20, 10, "ray::ServeReplica:a:llm", 0.0),
        21: Proc(21, 20, "python -m vllm engine", 0.0),  # the replica's engine core: its child
        22: Proc(22, 21, "python worker", 0.0),
        30: Proc(30, 10, "ray::RayWorkerWrapper", 0.0),  # a vLLM Ray worker the replica claims
        40: Proc(40, 1, "bash", 0.0),
    }
    g = group_of(procs, claims={30: "replica:20"})
    assert g == {
        1: "other",
        10: "ray_system",
        20: "replica:20",
        21: "replica:20",
        22: "replica:20",
        30: "replica:20",
        40: "other",
    }


def test_seven_replicas_and_a_router_on_rapl_count_each_joule_once(
    tmp_path: Path, titled: list[subprocess.Popen[bytes]]
) -> None:
    zones = make_rapl(tmp_path)
    # idle well below what is written: under load a tick can last several times the test's own step
    pkg_w, dram_w, idle = 40.0, 6.0, {"cpu": 4.0, "dram": 0.5}
    account = NodeAccount([RaplMeter(str(tmp_path), node="n1")], "n1", idle_w=idle)
    written = {"cpu:package-0": 0.0, "dram:package-0": 0.0}
    t_last = time.monotonic()
    uj = {"package-0": 1_000_000, "dram": 1_000_000}
    for _ in range(4):
        time.sleep(0.4)
        now = time.monotonic()
        dt = now - t_last
        t_last = now
        for name, w, key in (("package-0", pkg_w, "cpu:package-0"), ("dram", dram_w, "dram:package-0")):
            step = int(w * dt * 1e6)
            uj[name] += step
            written[key] += step / 1e6
            zones[name].write_text(f"{uj[name]}\n")
        zones["psys"].write_text("999999999999\n")  # psys overlaps the package: must never count
        account.tick()
    snap = account.snapshot()
    # no double counting: the account metered exactly what the test wrote, once
    for key, j in written.items():
        assert snap["metered_by_counter_j"][key] == pytest.approx(j, rel=1e-9)
    metered = sum(written.values())
    assert snap["metered_j"] == pytest.approx(metered, rel=1e-9)
    # closure: baseline + every group == metered
    assert abs(snap["closure_error_j"]) < 1e-9 * metered
    groups = snap["groups"]
    replicas = {g: v for g, v in groups.items() if v["kind"] == "replica"}
    pids = {p.pid for p in titled}
    assert {int(g.rsplit(":", 1)[1]) for g in replicas} >= pids - {titled[7].pid, titled[8].pid}
    # (other helpers' Ray apps may run on this machine too: their groups are theirs, not ours)
    ours = groups[f"router:{titled[7].pid}"]
    assert ours["proxy_part_j"] > 0  # the proxy's share went to the router that handled the requests
    assert all(v["j"] > 0 for g, v in replicas.items() if int(g.rsplit(":", 1)[1]) in pids)
    served = sum(v["j"] for v in groups.values() if v["kind"] in ("replica", "router"))
    assert served <= metered - snap["baseline_idle_j"] + 1e-9
    # the configured idle baseline, kept apart: idle W x the ticks' own window
    window = snap["window_s"][1] - snap["window_s"][0]
    assert snap["baseline_idle_j"] == pytest.approx((idle["cpu"] + idle["dram"]) * window, rel=1e-6)


def test_estimate_node_meter_against_proc_stat_and_psutil(titled: list[subprocess.Popen[bytes]]) -> None:
    """Independent check: the test reads /proc/stat itself before and after, and sums psutil's
    per-process CPU time; the account's CPU figure and its groups must agree with those."""
    meter = NodeEstimateMeter(65.0, None, 0.375, node="n1")

    def busy_s() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")

    ours = {p.pid: psutil.Process(p.pid) for p in titled[:8]}  # 7 replicas and the router

    def psutil_cpu_s() -> dict[int, float]:
        return {pid: sum(p.cpu_times()[:2]) for pid, p in ours.items()}

    p0 = psutil_cpu_s()
    # the test's own /proc/stat reads bracket the account's first and last reads (on a loaded 2-core
    # machine the test can be descheduled between two lines, so both sides of each read are taken)
    b0_before = busy_s()
    account = NodeAccount([meter], "n1")
    b0_after = busy_s()
    for _ in range(4):
        time.sleep(0.3)
        account.tick()
    time.sleep(0.3)
    b1_before = busy_s()
    account.tick()
    b1_after = busy_s()
    p1 = psutil_cpu_s()
    snap = account.snapshot()
    cpu_j = snap["metered_by_counter_j"]["cpu:node"]
    low, high = (b1_before - b0_after) * meter.per_core_w, (b1_after - b0_before) * meter.per_core_w
    assert 0.95 * low <= cpu_j <= 1.05 * high, (low, cpu_j, high)
    b0, b1 = b0_before, b1_after
    assert abs(snap["closure_error_j"]) < 1e-9 * snap["metered_j"]
    assert snap["baseline_idle_j"] >= 0 and snap["by_kind_j"].get("other", 0.0) >= 0
    # the groups' CPU time is the processes' CPU time (psutil), never more than the node's busy time
    group_cpu = sum(v["cpu_s"] for v in snap["groups"].values())
    # per-process times are exact (CFS), /proc/stat's are sampled per tick: they agree within a few %
    assert group_cpu <= 1.05 * (b1 - b0) + 0.1
    # and each of our processes' CPU time as psutil sees it is what its group got (its window holds
    # the account's: up to one scan of difference per process)
    for pid in ours:
        group = next(g for g in snap["groups"] if g.endswith(f":{pid}"))
        assert snap["groups"][group]["cpu_s"] <= p1[pid] - p0[pid] + 0.02
        assert snap["groups"][group]["cpu_s"] >= 0.5 * (p1[pid] - p0[pid])


def test_share_meter_reconciles_with_the_account_and_never_steps_back() -> None:
    """Step 2 without Ray: this process's share, fine-grained between account ticks, fed to a real
    ledger. The ledger splits exactly the group's exact share at the last tick, up to ``pending_j``."""
    account = NodeAccount([NodeEstimateMeter(65.0, None, 0.375, node="n1")], "n1")
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(0.25):
            account.tick()

    th = threading.Thread(target=ticker, daemon=True)
    th.start()
    time.sleep(0.6)
    meter = AccountShareMeter(None, "n1", 0.25, fetch=account.share_of_pid)
    try:
        assert meter.error is None and meter.group == "other"  # pytest is not a Ray process
        first = meter.read()
        exact0 = sum(meter._exact.values())  # the exact share that reading was extrapolated from
        ledger = Ledger(first, meter_limits(meter.info.update_period_s, meter.info.resolution_j))
        shown0 = sum(first.energy_j.values())
        last: dict[str, float] = {}
        zero = 0
        for i in range(40):
            ledger.begin(f"r{i}", meter.read(), 1.0)
            sum(j * j for j in range(30_000))  # work inside the request
            r = meter.read()
            assert all(r.energy_j[k] >= v for k, v in last.items())  # never a step back
            last = r.energy_j
            # every request did work, so every one gets energy, also inside an overshoot that is
            # settling (the extrapolation ran ahead of the exact share: share.py's SETTLE_RATE)
            zero += ledger.end(f"r{i}", r).joules <= 0
            time.sleep(0.02)
        assert zero == 0, f"{zero} of 40 requests saw no energy"
        stop.set()
        th.join()
        meter._poll()  # the final exact share
        final = meter.read()
        ledger.observe(final)
        t = ledger.totals()
        exact = sum(meter._exact.values())
        assert exact == pytest.approx(sum(account.share_of_pid(os.getpid())["energy_j"].values()))
        shown = sum(final.energy_j.values())
        assert shown - shown0 == pytest.approx(sum(t.metered_j.values()), rel=1e-9)
        # what the ledger split = the exact share's growth + what is still pending, exactly
        assert sum(t.metered_j.values()) == pytest.approx(
            (exact - exact0) + meter.pending_j() - (shown0 - exact0), rel=1e-9, abs=1e-9
        )
        assert abs(meter.pending_j()) <= 65.0 * 0.5  # at most about one account period of the node
        assert exact - exact0 > 0
    finally:
        stop.set()
        meter.close()


def share_with_child(
    replica: subprocess.Popen[bytes],
) -> tuple[psutil.Process, NodeAccount, AccountShareMeter]:
    """A titled replica's one child (once started), an account that has seen both in two ticks, and
    the replica's share meter on it (a 60 s period: no tick comes unless the test makes one)."""
    deadline = time.monotonic() + 30
    while not psutil.Process(replica.pid).children():
        assert time.monotonic() < deadline, "no child"
        time.sleep(0.02)
    (child,) = psutil.Process(replica.pid).children()
    account = NodeAccount([NodeEstimateMeter(65.0, None, 0.375, node="n1")], "n1")
    account.tick()
    time.sleep(0.2)
    account.tick()  # the child is seen, in the replica's group
    return child, account, AccountShareMeter(None, "n1", 60.0, pid=replica.pid, fetch=account.share_of_pid)


def test_between_ticks_a_share_moves_with_the_cpu_of_the_whole_group() -> None:
    """A replica whose work runs in its children (vLLM's engine core and workers): between two ticks
    its share must move with the CPU time of every process in its group, not only its own. Here the
    replica process sleeps while its child spins; the share's growth over half a second is the
    child's CPU time (psutil, read by the test) x the account's rate. Extrapolating by the replica's
    own CPU time showed nothing, and the children's energy arrived in one step at the next tick."""
    code = (  # (under a title of its own, the replica's sys.executable is empty: the path is given)
        "import subprocess, time\n"
        f"subprocess.Popen([{sys.executable!r}, '-c', 'while True: pass'])\n"
        "time.sleep(600)\n"
    )
    replica = spawn("ray::ServeReplica:app:llm", code)
    try:
        child, account, meter = share_with_child(replica)
        try:
            assert meter.group == f"replica:{replica.pid}"

            def group_cpu_s() -> float:
                return sum(sum(p.cpu_times()[:2]) for p in (psutil.Process(replica.pid), child))

            r0, c0 = meter.read(), group_cpu_s()
            time.sleep(0.5)  # no tick in between: the share only extrapolates
            r1, c1 = meter.read(), group_cpu_s()
        finally:
            meter.close()
        rate = sum(account.rate_j_per_cpu_s().values())
        grown = sum(r1.energy_j.values()) - sum(r0.energy_j.values())
        assert c1 - c0 > 0.05  # the child did work
        assert grown == pytest.approx((c1 - c0) * rate, rel=0.1, abs=0.02 * rate)
    finally:
        os.killpg(replica.pid, 9)
        replica.wait()


def test_a_process_of_the_group_that_exits_between_ticks_leaves_the_share_at_its_rate() -> None:
    """A child of the replica (a compile worker) exits between two ticks. The group's CPU clock must
    keep the child's CPU time: dropping it stepped the clock back, the share read that as an overshoot
    and moved at half its rate (``SETTLE_RATE``) until the next tick, so requests then got half
    their energy. After the exit the share grows by the replica's own CPU time (psutil) x the rate."""
    child = "import time\nt = time.time()\nwhile time.time() - t < 2.5: pass\n"
    code = (  # the replica spins and reaps its child when it exits (a zombie's clock would still read)
        "import subprocess, time\n"
        f"child = subprocess.Popen([{sys.executable!r}, '-c', {child!r}])\n"
        "while True:\n"
        "    t = time.perf_counter()\n"
        "    while time.perf_counter() - t < 0.02: pass\n"
        "    child.poll()\n"
    )
    replica = spawn("ray::ServeReplica:app:llm", code, wait=True)
    try:
        kid, account, meter = share_with_child(replica)
        deadline = time.monotonic() + 30
        try:
            assert meter.group == f"replica:{replica.pid}" and meter.read() is not None
            assert kid.is_running(), "the child exited before the share was read with it"
            while psutil.pid_exists(kid.pid):  # exits and is reaped; no tick in between
                assert time.monotonic() < deadline, "the child did not exit"
                meter.read()  # read all along, as a replica's sampler does
                time.sleep(0.02)
            r0, c0 = meter.read(), sum(psutil.Process(replica.pid).cpu_times()[:2])
            time.sleep(0.6)
            r1, c1 = meter.read(), sum(psutil.Process(replica.pid).cpu_times()[:2])
        finally:
            meter.close()
        rate = sum(account.rate_j_per_cpu_s().values())
        grown = sum(r1.energy_j.values()) - sum(r0.energy_j.values())
        assert c1 - c0 > 0.2  # the replica worked
        assert grown == pytest.approx((c1 - c0) * rate, rel=0.15), (grown, (c1 - c0) * rate)
    finally:
        os.killpg(replica.pid, 9)
        replica.wait()


def test_a_window_across_a_change_of_the_groups_processes_keeps_the_cpu_before_it(tmp_path: Path) -> None:
    """A process joins the replica's group (a compile worker) and the share takes the tick that lists
    it. A window that opened before and closes right after must still move with the group's CPU time
    in it (psutil, read by the test) x the rate: the group's clock restarted at the new set's CPU
    time, so the work done before the switch moved the share by nothing (a pipeline stage's tag
    without its node, seen in CI)."""
    go = tmp_path / "go"
    code = (
        "import os, subprocess, time\n"
        f"subprocess.Popen([{sys.executable!r}, '-c', 'while True: pass'])\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        f"subprocess.Popen([{sys.executable!r}, '-c', 'import time; time.sleep(600)'])\n"
        "time.sleep(600)\n"
    )
    replica = spawn("ray::ServeReplica:app:llm", code)
    try:
        spinner, account, meter = share_with_child(replica)
        try:
            procs = [psutil.Process(replica.pid), spinner]

            def group_cpu_s() -> float:
                return sum(sum(p.cpu_times()[:2]) for p in procs)

            r0, c0 = meter.read(), group_cpu_s()
            time.sleep(0.4)  # the spinner works; nothing else happens
            go.touch()
            deadline = time.monotonic() + 30
            while not any(  # exec'd (a forked copy still has the replica's title: a group of its own)
                "sleep(600)" in " ".join(c.cmdline()) for c in psutil.Process(replica.pid).children()
            ):
                assert time.monotonic() < deadline, "no second child"
                time.sleep(0.01)
            account.tick()  # the group's processes are three now
            meter._poll()
            r1 = meter.read()
            procs = psutil.Process(replica.pid).children() + [procs[0]]
            c1 = group_cpu_s()
        finally:
            meter.close()
        assert len(meter._pids) == 3
        rate = sum(account.rate_j_per_cpu_s().values())
        grown = sum(r1.energy_j.values()) - sum(r0.energy_j.values())
        assert c1 - c0 > 0.2  # the group worked
        assert grown >= 0.7 * (c1 - c0) * rate, (grown, (c1 - c0) * rate)
    finally:
        os.killpg(replica.pid, 9)
        replica.wait()


def test_a_routers_share_moves_with_its_proxy_part_between_ticks() -> None:
    """A router's group gets the proxy's share too (split by the routers' CPU time), so between ticks it
    must move by the router's CPU time x the rate x (routers' + proxy's CPU) / routers' CPU. With the
    node's plain rate it trailed its exact value by the proxy's part at every tick (here, with the
    proxy as busy as the router, by about half). Checked at each tick: the exact share against what was
    shown just before it, and over the run against the two processes' CPU time read by psutil."""
    router, proxy = spawn("ray::ServeReplica:app:router", wait=True), spawn("ray::ProxyActor", wait=True)
    account = NodeAccount([NodeEstimateMeter(65.0, 2, 0.0, node="n1")], "n1")
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(0.3):
            account.tick()

    th = threading.Thread(target=ticker, daemon=True)
    try:
        time.sleep(0.3)
        account.tick()
        th.start()
        time.sleep(1.0)  # a few ticks: the rate has seen both processes
        meter = AccountShareMeter(None, "n1", 0.3, pid=router.pid, fetch=account.share_of_pid)
        try:
            assert meter.group == f"router:{router.pid}"
            cpu0 = sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in (router, proxy))
            shown0 = sum(meter.read().energy_j.values())
            gaps, grown, prev, exact_prev = [], [], meter.read(), sum(meter._exact.values())
            end = time.monotonic() + 4.0
            while time.monotonic() < end:
                time.sleep(0.02)
                ticks = meter.ticks
                r = meter.read()
                exact = sum(meter._exact.values())
                if meter.ticks != ticks or exact != exact_prev:  # a tick arrived since the last read
                    gaps.append(exact - sum(prev.energy_j.values()))
                    grown.append(exact - exact_prev)
                prev, exact_prev = r, exact
            cpu1 = sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in (router, proxy))
            shown1 = sum(meter.read().energy_j.values())
        finally:
            meter.close()
        assert len(grown) >= 6 and sum(grown) > 0
        # at the ticks, the extrapolation was where the exact share arrived (the old rate: ~0.5)
        assert abs(sum(gaps)) / sum(grown) < 0.25, (gaps, grown)
        # and the router's share is the two processes' CPU x the estimate's 32.5 W/core
        assert shown1 - shown0 == pytest.approx((cpu1 - cpu0) * 32.5, rel=0.3)
    finally:
        stop.set()
        if th.is_alive():
            th.join()
        for p in (router, proxy):
            p.kill()
            p.wait()


def test_an_undershoot_at_a_tick_is_released_over_a_period_not_in_one_read(tmp_path: Path) -> None:
    """A process joins a replica's group with CPU time of its own (a vLLM engine core started between
    two ticks): the share's extrapolation missed it, so the exact share at the next tick is ahead of
    what was shown. That gap was drawn over the last period; shown in the next read, it landed whole
    in whichever short request was open (10.7 J in a 30 ms request). It must come out at a power the
    node can draw (65 W here: 2 cores x 32.5 W/core) and be shown in full within one period."""
    go = tmp_path / "go"
    code = (
        "import os, subprocess, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        f"subprocess.Popen([{sys.executable!r}, '-c', 'while True: pass'])\n"
        "time.sleep(600)\n"
    )
    replica = spawn("ray::ServeReplica:app:llm", code, wait=True)
    account = NodeAccount([NodeEstimateMeter(65.0, 2, 0.375, node="n1")], "n1")
    try:
        account.tick()
        meter = AccountShareMeter(None, "n1", 1.0, pid=replica.pid, fetch=account.share_of_pid)
        try:
            assert meter.group == f"replica:{replica.pid}"
            go.touch()
            time.sleep(0.8)  # the child spins, unseen by the share's extrapolation
            before = meter.read()
            account.tick()  # the child is in the group now, with its CPU time since it started
            meter._poll()
            gap = sum(meter._exact.values()) - sum(before.energy_j.values())
            assert gap > 10.0, gap  # ~0.7 CPU-s x 32.5 W
            last, worst_w = before, 0.0
            while (last.t_s - before.t_s) < 1.2:  # short requests, back to back
                time.sleep(0.02)
                r = meter.read()
                j = sum(r.energy_j.values()) - sum(last.energy_j.values())
                worst_w = max(worst_w, (j - 0.05) / (r.t_s - last.t_s))
                last = r
            assert worst_w <= 65.0, f"a window showed {worst_w:.0f} W"
            assert meter.pending_j() >= -1e-6, meter.pending_j()  # the whole gap is shown
        finally:
            meter.close()
    finally:
        os.killpg(replica.pid, 9)
        replica.wait()


def while_flag(flag: Path, busy_s: float, idle_busy_s: float, idle_sleep_s: float) -> str:
    """A process's code: it spins in chunks of ``busy_s`` while ``flag`` exists, else spins
    ``idle_busy_s`` and sleeps ``idle_sleep_s`` at a time (the test turns its work on and off)."""
    return (
        "import os, time\n"
        "def spin(s):\n"
        "    t = time.perf_counter()\n"
        "    while time.perf_counter() - t < s: pass\n"
        "while True:\n"
        f"    if os.path.exists({str(flag)!r}):\n"
        f"        spin({busy_s})\n"
        "    else:\n"
        f"        spin({idle_busy_s})\n"
        f"        time.sleep({idle_sleep_s})\n"
    )


Window = tuple[float, float, float, float, float, float]


def busy_cpu_s() -> float:
    """The node's busy CPU time since boot, summed over cores, as the kernel counts it (s)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class WrittenRapl:
    """A RAPL tree the test writes (the package at ``power_w`` plus ``per_cpu_w`` per busy CPU-second of
    the node, as the test reads it from /proc/stat; replaced atomically: no torn read), an account on it
    ticked every ``period_s``, and a *reference* account on the same tree that the test ticks at each
    window's two ends: the share the account itself would give that window. ``limit_w``: the package's
    enforced power limit, written as powercap shows it."""

    def __init__(self, root: Path, period_s: float = 0.5, limit_w: float | None = None) -> None:
        self.package = make_rapl(root)["package-0"]
        if limit_w is not None:  # the package's enforced power limit, as powercap shows PL1
            (self.package.parent / "enabled").write_text("1\n")
            (self.package.parent / "constraint_0_power_limit_uw").write_text(f"{int(limit_w * 1e6)}\n")
        self.period_s, self.power_w, self.per_cpu_w = period_s, 30.0, 0.0
        self._uj, self._last, self._lock = 1_000_000.0, (time.monotonic(), busy_cpu_s()), threading.Lock()
        self._stop = threading.Event()
        self.ticked, self.reference = self._account(root), self._account(root)
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._write, self._tick)]

    @staticmethod
    def _account(root: Path) -> NodeAccount:
        return NodeAccount([RaplMeter(str(root), node="n1")], "n1", idle_w={"cpu": 4.0, "dram": 0.5})

    def _write(self) -> None:
        while not self._stop.wait(0.01):
            self._advance()

    def _advance(self) -> None:
        """The counter brought up to now (the writer does it every 10 ms; `exact` before its tick)."""
        with self._lock:
            now, busy = time.monotonic(), busy_cpu_s()
            self._uj += (self.power_w * (now - self._last[0]) + self.per_cpu_w * (busy - self._last[1])) * 1e6
            self._last = (now, busy)
            tmp = self.package.with_suffix(".tmp")
            tmp.write_text(f"{int(self._uj)}\n")
            os.replace(tmp, self.package)

    def _tick(self) -> None:
        while not self._stop.wait(self.period_s):
            self.ticked.tick()

    def __enter__(self) -> WrittenRapl:
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for th in self._threads:
            th.join()

    def share(self, pid: int) -> AccountShareMeter:
        meter = AccountShareMeter(None, "n1", self.period_s, pid=pid, fetch=self.ticked.share_of_pid)
        assert meter.group == f"replica:{pid}"
        return meter

    def exact(self, pid: int) -> float:
        """The reference account's share of ``pid``'s group, ticked now, on the counter as of now (J)."""
        self._advance()
        self.reference.tick()
        return sum(self.reference.share_of_pid(pid)["energy_j"].values())

    def read_both(self, meter: AccountShareMeter) -> tuple[Reading, float, float]:
        """The meter's reading and the reference's share at one end of a window, and the replica's CPU
        time between the two (s): on a loaded 2-core machine the test thread can wait tens of ms
        between them, and the replica's work then is in one and not in the other (its resolution)."""
        c0 = process_cpu_s(meter.pid) or 0.0
        r, e = meter.read(), self.exact(meter.pid)
        return r, e, max((process_cpu_s(meter.pid) or 0.0) - c0, 0.0)

    def windows(self, meter: AccountShareMeter, seconds: float) -> list[Window]:
        """Back-to-back windows of 0.15-0.6 s through a real `Ledger` and `make_tag`, once the meter
        has its first few misses: (shown, reference, the tag's uncertainty, the old bound: average
        power x the account period, when the window ended, the replica's CPU-seconds between the
        meter's and the reference's reads at the two ends)."""
        out, rng = [], random.Random(7)
        first, e0, skew0 = self.read_both(meter)
        ledger = Ledger(first, meter_limits(meter.info.update_period_s, meter.info.resolution_j))
        ledger.begin("0", first, 1.0)
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.15, 0.6))
            r, e1, skew1 = self.read_both(meter)
            alloc = ledger.end(str(i), r)
            i += 1
            ledger.begin(str(i), r, 1.0)
            tag = make_tag(alloc, meter.info, "time", "r")
            old = alloc.joules / alloc.duration_s * meter.info.update_period_s
            if meter.info.edge_error_j is not None and tag.uncertainty_j is not None:
                out.append((alloc.joules, e1 - e0, tag.uncertainty_j, old, time.monotonic(), skew0 + skew1))
            e0, skew0 = e1, skew1
        return out


def outside(ws: list[Window], top_w: float) -> list[Window]:
    """The windows whose error is beyond their tag's uncertainty, with the reference's own resolution
    as slack: at each end, a clock tick (10 ms) of the replica's CPU time or, when more, what it ran
    between the meter's read and the reference's, at no more than the package's power per
    CPU-second."""
    return [w for w in ws if abs(w[0] - w[1]) > w[2] + max(2 * 0.01, w[5]) * top_w]


def test_a_share_tags_uncertainty_covers_its_window_error_and_is_far_below_a_period_of_its_power(
    tmp_path: Path,
) -> None:
    """A tag on an account share states an uncertainty of twice the meter's ``edge_error_j`` (the largest
    miss of its extrapolation over a period at recent ticks) plus what the meter moved in the window,
    not its average power x the account period. Steady (the package written at its 4 W idle plus
    26 W per busy CPU-second of the node: 30 W with the spinning replica alone), the bound is a small
    part of the old one and covers the windows' errors against the reference account; when the power
    per CPU-second swings (8 / 44 W: 12 W / 48 W with the replica alone, every 0.7 s, across the 0.5 s
    ticks) the misses grow, and the bound with them. The package draws per CPU-second, as hardware
    does: a constant 30 W made the replica's share of each interval its fraction of the node's busy
    CPU time, which the machine's other load (a shared 2-core VM) moves at will; a window over such a
    change was beyond the bound now and then while "steady" (2 of 6 runs, one window of 23-24)."""
    replica = spawn("ray::ServeReplica:app:model0", "while True: pass", wait=True)
    try:
        with WrittenRapl(tmp_path) as rapl:
            rapl.power_w, rapl.per_cpu_w = 4.0, 26.0
            time.sleep(1.2)  # the replica in a tick
            meter = rapl.share(replica.pid)
            try:

                def swing() -> None:
                    for w in [8.0, 44.0] * 6:
                        rapl.per_cpu_w = w
                        time.sleep(0.7)

                rapl.windows(meter, 3.0)  # the account's rates and the meter's misses past their start
                steady = rapl.windows(meter, 8.0)
                swinger = threading.Thread(target=swing)
                swung_s = time.monotonic()
                swinger.start()
                swinging = rapl.windows(meter, 8.0)
                swinger.join()
                rapl.per_cpu_w = 26.0
                rapl.windows(meter, 4.5)  # steady again, the swing's misses aged out

                # One busy stretch of eight staggered, overlapping requests: in the sum of their tags the
                # edges they share cancel, so the run's uncertainty is the stretch's, not eight requests'
                first, e0, skew0 = rapl.read_both(meter)
                ledger = Ledger(first, meter_limits(meter.info.update_period_s, meter.info.resolution_j))
                ledger.begin("0", first, 1.0)
                tags = []
                for i in range(1, 9):
                    time.sleep(0.25)
                    r, e1, skew1 = rapl.read_both(meter) if i == 8 else (meter.read(), 0.0, 0.0)
                    if i < 8:
                        ledger.begin(str(i), r, 1.0)
                    tags.append(make_tag(ledger.end(str(i - 1), r), meter.info, "time", "r"))
                stretch_ref = e1 - e0
            finally:
                meter.close()
    finally:
        replica.kill()
        replica.wait()
    for name, ws, top_w in (("steady", steady, 30.0), ("swinging", swinging, 48.0)):
        old_outside = [w for w in ws if abs(w[0] - w[1]) > w[3] + 2 * 0.01 * top_w]
        print(
            f"{name}: {len(ws)} windows, error beyond the bound in {len(outside(ws, top_w))} "
            f"({len(old_outside)} with the old one); median bound {statistics.median(w[2] for w in ws):.2f} J"
        )
        assert len(ws) >= 10, (name, ws)
    assert outside(steady, 30.0) == [], steady
    # a sudden change is beyond what the recent misses bound until the ticks show it: a window that
    # ended more than two periods and a poll after the swing began must be covered
    late = [w for w in outside(swinging, 48.0) if w[4] - swung_s > 2 * 0.5 + 0.25 + 0.6]
    assert late == [], (late, swung_s, swinging)
    # steady, the bound is a small part of a period of the window's power (what every tag said before)
    assert statistics.median(w[2] / w[3] for w in steady) < 0.5, steady
    assert statistics.median(w[2] for w in swinging) > statistics.median(w[2] for w in steady)
    run_j, run_u = sum(t.joules or 0.0 for t in tags), run_uncertainty_j(tags, complete=True)
    summed = sum(t.uncertainty_j or 0.0 for t in tags)
    print(
        f"stretch: tags {run_j:.2f} J, reference {stretch_ref:.2f} J, run ± {run_u:.2f} J (summed {summed:.2f})"
    )
    assert [t.attribution.stretch_starts for t in tags if t.attribution] == [1] + [0] * 7
    assert run_u is not None and run_u <= summed / 2
    assert abs(run_j - stretch_ref) <= run_u + max(2 * 0.01, skew0 + skew1) * 30.0


def test_after_a_step_of_the_nodes_power_the_edge_error_follows_the_accounts_rate_back_down(
    tmp_path: Path,
) -> None:
    """The package's power steps from 30 W to 60 W under a spinning replica. The first ticks after the
    step show large misses (the account's rate follows the step by half each tick); the edge error must
    rise with them, keep every window after those ticks covered, and come back down within a few ticks
    instead of holding the step's miss for ``EDGE_TICKS`` ticks (which kept every short request of a
    replay that began just after a load change at the bound of that change)."""
    replica = spawn("ray::ServeReplica:app:model0", "while True: pass", wait=True)
    edges: list[tuple[float, float | None]] = []
    try:
        with WrittenRapl(tmp_path) as rapl:
            time.sleep(1.2)
            meter = rapl.share(replica.pid)
            done = threading.Event()

            def watch() -> None:
                while not done.wait(0.05):
                    edges.append((time.monotonic(), meter.info.edge_error_j))

            watcher = threading.Thread(target=watch)
            try:
                rapl.windows(meter, 3.0)  # past the meter's first misses
                watcher.start()
                before = rapl.windows(meter, 2.0)
                rapl.power_w, stepped_s = 60.0, time.monotonic()
                after = rapl.windows(meter, 5.0)
            finally:
                done.set()
                if watcher.ident is not None:
                    watcher.join()
                meter.close()
    finally:
        replica.kill()
        replica.wait()
    period = 0.5
    peak = max(e for t, e in edges if e is not None and t > stepped_s)
    steady = max(e for t, e in edges if e is not None and t < stepped_s)
    late = [e for t, e in edges if e is not None and t > stepped_s + 7 * period + 0.25]
    print(f"edge: {steady:.2f} J before the step, peak {peak:.2f} J, {max(late):.2f} J seven ticks after")
    assert peak > 3 * steady, (steady, peak)  # the step's misses were seen
    assert max(late) < 0.5 * peak, (peak, late)  # and aged out within a few ticks, not eight
    assert outside(before, 30.0) == [], before
    # the step's own misses are seen within two ticks and a poll: later windows are covered. One may
    # not be, on a loaded CI machine: other processes' bursts move the node's busy CPU time, so the
    # replica's part of the written package within a tick, where no tick shows it yet (one late window in a
    # CI run, 2 J beyond a 0.4 J bound; this test's point is the edge error's rise and fall above)
    late_windows = [w for w in outside(after, 60.0) if w[4] - stepped_s > 2 * period + 0.25 + 0.6]
    assert len(late_windows) <= 1, (late_windows, stepped_s, after)


def test_a_runs_bound_from_its_shares_own_figures_does_not_grow_with_its_stretches(tmp_path: Path) -> None:
    """Thirty-two short requests, each alone (a busy stretch of its own), through a real `ReplicaEnergy`
    on the share. The stretch rule bounds their sum by the number of stretches x the largest tag
    uncertainty. The bound of a replay window (``replay.window``: the misses and moves the share's
    ``/v1/energy`` rows show between two snapshots, and an edge error at each end) must cover the
    error of the sum against the reference account: over the first 24, at a steady power per busy
    CPU-second, far below the stretch rule; over all 32, when the power per CPU-second has quadrupled
    for the last eight (its frequency, its instruction mix) and the share extrapolates at the old rate
    until the account's ticks catch up, an error well beyond the reference's resolution. The package
    draws its idle (the account's baseline) plus its power per CPU-second of the node's load, as
    hardware does: a constant draw would give the gaps' energy to whoever ran in them at the
    reference's short windows and to the replica at the account's longer ticks, a split that depends
    on the ticks (and on the machine's other load), not on the share's drift."""
    n, step = 32, 24
    rates = [20.0] * step + [80.0] * (n - step)
    work = tmp_path / "work"
    replica = spawn("ray::ServeReplica:app:model0", while_flag(work, 0.002, 0.0, 0.001), wait=True)
    try:
        with WrittenRapl(tmp_path / "rapl") as rapl:
            rapl.power_w, rapl.per_cpu_w = 4.0, rates[0]
            time.sleep(1.2)
            meter = rapl.share(replica.pid)
            energy = ReplicaEnergy(meter, EnergyConfig(attribution="time"), "r", [])
            try:
                time.sleep(rapl.period_s * (MIN_EDGE_TICKS + 2))  # the share has its first misses
                snapshots, tags, reference = [energy.snapshot()], [], []
                for i, w in enumerate(rates):
                    if i == step:
                        snapshots.append(energy.snapshot())
                    rapl.per_cpu_w = w
                    e0 = rapl.exact(replica.pid)
                    window = energy.open(str(i), 1.0)
                    work.touch()
                    time.sleep(0.08)
                    work.unlink()
                    time.sleep(0.003)  # its last chunk of work done
                    tags.append(window.close())
                    reference.append(rapl.exact(replica.pid) - e0)
                    time.sleep(0.12)
                snapshots.append(energy.snapshot())
            finally:
                energy.close()
    finally:
        os.killpg(replica.pid, 9)
        replica.wait()
    assert [t.attribution.stretch_starts for t in tags if t.attribution] == [1] * n

    def view(snapshot: dict[str, Any]) -> EnergyView:
        return EnergyView(deployments={"m": DeploymentEnergy.of({"r": ReplicaRow.model_validate(snapshot)})})

    for part, end in (("steady", step), ("stepped", n)):
        bound = window_uncertainty_j(view(snapshots[0]), view(snapshots[1 if end == step else 2]), "m")
        stretches = run_uncertainty_j(tags[:end], complete=True)
        run = run_uncertainty_j(tags[:end], complete=True, windows_j=bound)
        shown, exact = sum(t.joules or 0.0 for t in tags[:end]), sum(reference[:end])
        # the reference's own resolution: a clock tick at each end of each window, at the package's
        # power per CPU-second, random across windows
        slack = 2 * 0.01 * sum(w**2 for w in rates[:end]) ** 0.5
        print(
            f"{part}, {end} stretches: tags {shown:.2f} J, reference {exact:.2f} J (± {slack:.2f}); "
            f"stretch rule ± {stretches:.2f} J, window bound ± {bound:.2f} J"
        )
        assert bound is not None and stretches is not None and run == min(bound, stretches)
        assert abs(shown - exact) <= bound + slack, (part, shown, exact, bound)
        if part == "steady":
            assert bound < stretches / 2, (bound, stretches)
        else:
            assert abs(shown - exact) > slack, (shown, exact, slack)  # the step left a real error


def test_a_share_never_moves_faster_than_its_device_can_draw(tmp_path: Path) -> None:
    """The package draws a steady 20 W, at its enforced limit of 20 W (the powercap constraint the
    test writes), over a baseline of 4 W. While the replica idles, the 16 W above the baseline are
    split by the little CPU time the node spends, so the account's rate, in J per CPU-second, is far
    above what one busy core can draw. When the replica then spins a full core, its extrapolation at
    that rate is more power than the package can draw: between any two reads the share must move no
    faster than the limit (before the bound, each moved at the rate until the next tick), and leave
    the limit once the account's rate has followed the load."""
    limit_w, spin = 20.0, tmp_path / "spin"
    replica = spawn("ray::ServeReplica:app:model0", while_flag(spin, 0.05, 0.0, 0.1), wait=True)
    try:
        with WrittenRapl(tmp_path / "rapl", limit_w=limit_w) as rapl:
            rapl.power_w = 20.0
            time.sleep(1.2)
            meter = rapl.share(replica.pid)
            try:
                time.sleep(rapl.period_s * 3)  # ticks over the idle replica
                rate = sum(meter._rate.values())  # what the share extrapolates by (J per CPU-second)
                quiet = time.monotonic() + 10.0  # the rate is high only while the node is quiet enough
                while rate <= limit_w and time.monotonic() < quiet:
                    time.sleep(rapl.period_s)
                    rate = sum(meter._rate.values())
                spin.touch()
                powers, prev = [], meter.read()
                end = time.monotonic() + 4.0
                while time.monotonic() < end:
                    time.sleep(0.02)
                    r = meter.read()
                    powers.append(
                        (sum(r.energy_j.values()) - sum(prev.energy_j.values())) / (r.t_s - prev.t_s)
                    )
                    prev = r
                spin.unlink()
            finally:
                meter.close()
    finally:
        os.killpg(replica.pid, 9)
        replica.wait()
    print(
        f"rate {rate:.1f} J/CPU-s; shown power: max {max(powers):.2f} W, at the bound in "
        f"{sum(p > limit_w - 1e-6 for p in powers)} of {len(powers)} reads, last 0.5 s median "
        f"{statistics.median(powers[-25:]):.2f} W"
    )
    assert meter.info.max_power_w == {"cpu:package-0": limit_w}
    # one core at this rate: more than the package can draw (16 W over the node's other busy CPU time:
    # on CI, with ~0.7 of a core busy elsewhere, 22 J per CPU-second)
    assert rate > limit_w, rate
    assert max(powers) <= limit_w * (1 + 1e-9), max(powers)
    assert max(powers) > 0.8 * limit_w, max(powers)  # the extrapolation reached the bound
    # ... and left it once the account's rate followed the load (16 W split by the spinning core's time)
    assert statistics.median(powers[-25:]) < 0.9 * limit_w, powers[-25:]


def test_an_overshoot_left_pending_while_the_group_idles_is_not_an_error_at_every_tick(
    tmp_path: Path,
) -> None:
    """The node's power falls (96 W to 12 W) while the replica spins: the share's extrapolation (at the
    old rate) runs ahead of the exact share, and the overshoot is settled by moving at half the rate. When the
    replica then idles (a few ms of work every 100 ms), the overshoot stays pending for long. It is
    one miss, at the tick that showed it; each later window is moved only by the little settling done
    inside it. Counted as a correction again at every tick (as before), it kept every tag's
    uncertainty at twice the pending overshoot for as long as it stood. The tags must still cover
    the windows' errors against the reference account."""
    spin = tmp_path / "spin"
    spin.touch()
    replica = spawn("ray::ServeReplica:app:model0", while_flag(spin, 0.05, 0.004, 0.1), wait=True)
    try:
        with WrittenRapl(tmp_path / "rapl") as rapl:
            rapl.power_w = 96.0
            time.sleep(1.2)
            meter = rapl.share(replica.pid)
            try:
                rapl.windows(meter, 3.0)  # the rates and the meter's misses past their start
                rapl.power_w = 12.0  # the replica still spins: the extrapolation runs ahead
                rapl.windows(meter, 2.5)
                spin.unlink()  # ... and now idles, with the overshoot pending
                rapl.windows(meter, rapl.period_s * (EDGE_TICKS + 1))  # the misses of the fall age out
                pending = meter.pending_j()  # shown - exact: the overshoot (the idle group adds ~nothing)
                idle = rapl.windows(meter, 5.0)
                still = meter.pending_j()
            finally:
                meter.close()
    finally:
        os.killpg(replica.pid, 9)
        replica.wait()
    bound = statistics.median(w[2] for w in idle)
    print(
        f"pending {pending:.2f} -> {still:.2f} J; {len(idle)} windows, median bound {bound:.3f} J, "
        f"outside {len(outside(idle, 96.0))}"
    )
    assert pending > 2.0 and still > 0.1 * pending, (pending, still)  # it stood through the windows
    assert len(idle) >= 8, idle
    assert bound < 0.25 * pending, (bound, pending)  # was >= 2 x pending: the overshoot at every tick
    assert len(outside(idle, 96.0)) <= len(idle) // 10, (outside(idle, 96.0), idle)


def test_processes_of_a_replica_on_another_node_are_its_group_in_this_nodes_account() -> None:
    """A replica whose stage runs on this node: the node's agent makes the stage's process a group of
    the account under the replica's name (counted once, here), reads its share back, and lets it go
    when the replica unwatches. Checked against psutil's CPU time of the stage process itself."""
    from serve_app.config_common import EnergyConfig
    from serve_app.energy.agents import NodeEnergyAgentImpl

    stage = subprocess.Popen([sys.executable, "-c", SPIN])  # untitled: `other` unless claimed
    agent = NodeEnergyAgentImpl("n1")
    try:
        time.sleep(0.3)
        cfg = EnergyConfig(meter="estimate", account_period_s=0.2).model_dump()
        info = agent.watch("4242@head-1", cfg, [stage.pid], [])
        assert info["source"] == "estimate" and f"cpu-process:{stage.pid}" in info["devices"]

        def group_now() -> tuple[dict[str, Any], float]:
            """The group at a fresh tick, and the stage's own CPU time (psutil) right after it."""
            ticks = agent.account_snapshot()[0]["ticks"]
            deadline = time.monotonic() + 30
            while agent.account_snapshot()[0]["ticks"] == ticks and time.monotonic() < deadline:
                time.sleep(0.01)
            c = psutil.Process(stage.pid).cpu_times()
            return agent.account_snapshot()[0]["groups"].get("replica:4242@head-1", {}), c.user + c.system

        group_now()  # the first tick after the claim
        g0, c0 = group_now()
        time.sleep(2.0)
        g1, c1 = group_now()
        read = agent.read("4242@head-1")
        (snap,) = agent.account_snapshot()
        group = snap["groups"]["replica:4242@head-1"]
        assert group["kind"] == "replica" and group["j"] > g0["j"] > 0
        # its CPU time is the stage's own (psutil), to a clock tick or two at either end
        assert g1["cpu_s"] - g0["cpu_s"] == pytest.approx(c1 - c0, abs=0.06), (g0, g1, c0, c1)
        assert sum(read["energy_j"].values()) == pytest.approx(group["j"], rel=0.5)  # a tick apart at most
        assert abs(read["pending_j"]) < sum(read["energy_j"].values())
        assert abs(snap["closure_error_j"]) < 1e-9 * snap["metered_j"]
        edges = []
        for _ in range(6):  # reads across a few ticks: the share's recent corrections travel with it
            time.sleep(0.25)
            edges.append(agent.read("4242@head-1")["edge_error_j"])
        assert edges[-1] is not None and 0 <= edges[-1] < sum(read["energy_j"].values()), edges
        agent.unwatch("4242@head-1")
        time.sleep(0.5)
        before = agent.account_snapshot()[0]["groups"]["replica:4242@head-1"]["cpu_s"]
        time.sleep(1.0)
        after = agent.account_snapshot()[0]["groups"]["replica:4242@head-1"]["cpu_s"]
        assert after == before  # released: the stage's CPU no longer goes to the replica
        assert "error" in agent.read("4242@head-1")
    finally:
        agent.close()
        stage.kill()
        stage.wait(timeout=10)


def test_answers_of_a_remote_agent_taken_out_of_order_never_step_back() -> None:
    """A replica spanning nodes asks the other node's agent from two threads (the poll and a request's
    settle), and the agent answers concurrently: the answer to the later ask can hold values read
    earlier. Taken in the order of the asks, the counter stepped back, and from near zero a backward
    step reads as a reset (the whole value counted again: a two-node CI run showed worker-1 16.3 J
    in the replica's ledger against 9.2 J in its account group). Real agent, real stage process."""
    from serve_app.config_common import EnergyConfig
    from serve_app.energy.agents import NodeEnergyAgentImpl, _Remote
    from serve_app.energy.keys import RemoteProcesses

    stage = subprocess.Popen([sys.executable, "-c", SPIN])
    agent = NodeEnergyAgentImpl("n1")
    try:
        cfg = EnergyConfig(meter="estimate", account_period_s=0.2).model_dump()
        agent.watch("7@head-1", cfg, [stage.pid], [])
        time.sleep(1.0)  # the stage's group has a share
        earlier = agent.read("7@head-1")
        time.sleep(0.3)
        later = agent.read("7@head-1")
        assert sum(later["energy_j"].values()) > sum(earlier["energy_j"].values())
        remote = _Remote(RemoteProcesses("id", "worker-1", (stage.pid,)), None, {})
        assert remote.take(1.0, later)  # asked first, read last
        assert remote.take(2.0, earlier)  # asked last, read first, answered last
        assert remote.energy_j == later["energy_j"]  # held: the values read last
        assert remote.adjusted_j == later["adjusted_j"] >= earlier["adjusted_j"]  # the same read's
        assert remote.asked_s == 2.0  # and the later ask counts as answered: they were read after it
    finally:
        agent.close()
        stage.kill()
        stage.wait(timeout=10)


def test_an_agent_nobody_asks_goes_quiet_and_the_next_question_wakes_it() -> None:
    """Every replica and router that polled the node's account is gone: the account ticks only every
    quiet period (its tick reads every process: CPU for nobody), and the first question brings the
    account period back. Closure holds across the quiet stretch (each tick splits all since the last)."""
    from serve_app.config_common import EnergyConfig
    from serve_app.energy.agents import NodeEnergyAgentImpl

    agent = NodeEnergyAgentImpl("n1")
    agent.quiet_after_s, agent.quiet_period_s = 0.5, 60.0
    try:
        key = agent.start_account(EnergyConfig(meter="estimate", account_period_s=0.05).model_dump())["key"]
        account = agent.account(key)
        assert account is not None

        def ticks_over(seconds: float) -> int:
            before = account.snapshot()["ticks"]
            time.sleep(seconds)
            return account.snapshot()["ticks"] - before

        asked = ticks_over(0.4)  # asked at start: ticks every 50 ms
        time.sleep(0.3)  # nothing asked for 0.7 s
        quiet = ticks_over(1.0)
        agent.account_snapshot()  # a question (what /v1/energy asks)
        woken = ticks_over(0.4)
        snap = account.snapshot()
    finally:
        agent.close()
    assert asked >= 3 and woken >= 3, (asked, woken)
    assert quiet == 0, quiet
    assert abs(snap["closure_error_j"]) < 1e-9 * snap["metered_j"]


def test_a_share_meter_waits_for_its_own_group_instead_of_reading_ray_systems(tmp_path: Path) -> None:
    """A Serve replica runs in a Ray worker that was ``ray::IDLE`` (group ``ray_system``) until it took
    the actor. Built before the account's next tick sees its new title, its meter must not take
    ``ray_system``'s share (its processes, its whole history) as its own: it has no share until then,
    and from its own group's first share on it follows that group, with no overshoot to work off."""
    flag = tmp_path / "take-the-actor"
    title = "ray::ServeReplica:app:clf"
    code = (
        f"import os\nwhile not os.path.exists({str(flag)!r}): pass\n"
        f"os.execv({sys.executable!r}, [{title!r}, '-c', 'while True: pass'])\n"
    )
    worker = spawn("ray::IDLE", code, wait=True)
    try:
        with WrittenRapl(tmp_path / "rapl", period_s=60.0) as rapl:  # the test makes the ticks
            for _ in range(6):
                time.sleep(0.5)
                rapl.ticked.tick()
            history_j = sum(rapl.ticked.group_energy_j("ray_system").values())
            assert history_j > 20.0, history_j  # the idle worker spun in ray_system
            flag.touch()
            deadline = time.monotonic() + 30
            while not Path(f"/proc/{worker.pid}/cmdline").read_bytes().startswith(title.encode()):
                assert time.monotonic() < deadline, "not retitled"
                time.sleep(0.01)
            meter = AccountShareMeter(
                None, "n1", 0.5, pid=worker.pid, fetch=rapl.ticked.share_of_pid, own_group=True
            )
            try:
                assert meter.error is not None  # the account still has it in ray_system
                with pytest.raises(MeterError):
                    meter.read()
                rapl.ticked.tick()
                meter._poll()
                assert meter.error is None and meter.group == f"replica:{worker.pid}"
                first, exact0 = meter.read(), sum(meter._exact.values())
                for _ in range(6):
                    time.sleep(0.5)
                    rapl.ticked.tick()
                    meter._poll()
                    last = meter.read()
                shown_j = sum(last.energy_j.values()) - sum(first.energy_j.values())
                exact_j = sum(rapl.ticked.share_of_pid(worker.pid)["energy_j"].values()) - exact0
                info = meter.info
            finally:
                meter.close()
    finally:
        worker.kill()
        worker.wait()
    print(f"ray_system history {history_j:.1f} J; replica exact {exact_j:.1f} J, shown {shown_j:.1f} J")
    assert exact_j > 5.0
    # within what one period of the package's active power can leave pending (an undershoot released
    # over a period); reading ray_system's share first left ~the history pending, moving at half rate
    assert abs(shown_j - exact_j) < 26.0 * 0.5 + 1.0, (shown_j, exact_j)
    assert info.missed_j is not None and info.missed_j < history_j / 2, (info.missed_j, history_j)


def test_a_rejected_counter_step_leaves_the_idle_baseline_as_it_was() -> None:
    """The lowest sustained power is the baseline idle: a counter step the account rejects (a reordered
    read: 0 J over the interval) says nothing of the power and must not set it to 0 W for good."""
    script = iter(
        [
            (0.0, 1000.0),
            (1.0, 1020.0),  # 20 W: the lowest sustained power so far
            (2.0, 1040.0),
            (3.0, 1035.0),  # a read reordered (5 J back, far from zero): 0 J
            (4.0, 1080.0),
            (5.0, 1100.0),  # 20 W again: all of it baseline idle
        ]
    )

    class Scripted:
        """The node's counter as the test scripts it (the vendor boundary)."""

        info = MeterInfo(source="rapl", devices=("package-0",), resolution_j=1e-6, update_period_s=0.001)

        def read(self) -> Reading:
            t_s, j = next(script)
            return Reading(t_s, {"cpu:package-0": j}, "rapl")

        def close(self) -> None:
            pass

    account = NodeAccount([Scripted()], "n1")
    for _ in range(4):
        account.tick()
    assert account.steps["reordered"] == 1
    before = account.baseline_j["cpu:package-0"]
    account.tick()  # 4 -> 5 s at 20 W: the baseline's power
    assert account.baseline_j["cpu:package-0"] - before == pytest.approx(20.0)
    assert sum(account.snapshot()["by_kind_j"].values()) == pytest.approx(
        account.metered_j["cpu:package-0"] - account.baseline_j["cpu:package-0"]
    )
