"""The node energy account through real Ray Serve and HTTP (the estimate path on this machine): under
concurrent load on three models the node closes, the node meter agrees with /proc/stat read by the
test itself, every tag carries serving overhead, and the replicas never sum past the node."""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config_common import EnergyConfig
from serve_app.energy.agents import account_key
from tests.conftest import traditional_config

MODELS = ["tfidf-logreg", "tfidf-xgboost", "bow-logreg"]
TEXTS = ["Du bist so ein dummer Idiot, halt die Klappe", "Heute scheint in Berlin die Sonne."] * 4
TICK_HZ = os.sysconf("SC_CLK_TCK")


class BusySampler:
    """The test's own /proc/stat reader: (monotonic time, node busy CPU seconds) every 20 ms."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.busy: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            self.t.append(time.monotonic())
            self.busy.append((v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / TICK_HZ)
            time.sleep(0.02)

    def at(self, t: float) -> tuple[float, float]:
        """Busy seconds at ``t``: the samples just before and just after (a bracket)."""
        i = bisect.bisect_left(self.t, t)
        assert 0 < i < len(self.t), "account window outside the test's samples"
        return self.busy[i - 1], self.busy[i]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def energy_view(base: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/energy", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


ACCOUNT = account_key(EnergyConfig())
"""This app's energy configuration (the default): other tests' apps on the session's Ray may have left
accounts of other configurations on the node, shown apart in ``nodes`` as ``<node>#<key>``."""


def ours(view: dict[str, Any]) -> str:
    """The ``nodes`` entry of this app's account (one node)."""
    (name,) = [n for n, a in view["nodes"].items() if a["account"] == ACCOUNT]
    return name


def wait_for_account(base: str, ticks: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = energy_view(base)
        if any(a["account"] == ACCOUNT and a["ticks"] >= ticks for a in view["nodes"].values()):
            return view
        time.sleep(0.5)
    raise TimeoutError("node account did not tick")


@dataclass(frozen=True)
class AccountDelta:
    """What one node account metered between two views (J), and the test's own bracket of its CPU
    counter from ``/proc/stat`` (the estimate's 65 W package spread over the cores)."""

    metered_j: float
    baseline_j: float
    cpu_j: float
    cpu_low_j: float
    cpu_high_j: float


def assert_account_closes(a0: dict[str, Any], a1: dict[str, Any], sampler: BusySampler) -> AccountDelta:
    """Between two views of one node account: what it metered is its baseline idle plus every group's
    energy (closure), and its CPU counter lies within the test's own ``/proc/stat`` busy time over the
    account's window, ±5 %."""
    d_metered = a1["metered_j"] - a0["metered_j"]
    d_baseline = a1["baseline_idle_j"] - a0["baseline_idle_j"]
    d_groups = sum(a1["by_kind_j"].values()) - sum(a0["by_kind_j"].values())
    assert d_metered > 0
    assert abs(d_metered - d_baseline - d_groups) <= 0.01 * d_metered
    lo0, hi0 = sampler.at(a0["window_s"][1])
    lo1, hi1 = sampler.at(a1["window_s"][1])
    per_core_w = 65.0 / (os.cpu_count() or 1)
    low, high = 0.95 * (lo1 - hi0) * per_core_w, 1.05 * (hi1 - lo0) * per_core_w
    d_cpu = a1["metered_by_counter_j"]["cpu:node"] - a0["metered_by_counter_j"]["cpu:node"]
    assert low <= d_cpu <= high
    return AccountDelta(d_metered, d_baseline, d_cpu, low, high)


def test_node_account_under_load(serve_app_factory, demo_artifacts) -> None:
    cfg = traditional_config(demo_artifacts, MODELS)
    for c in cfg["classifiers"]:  # CodeCarbon beside the account: same node, same window
        c["energy"] = {"codecarbon": True}
    base = serve_app_factory(cfg, name="acct", route_prefix="/acct")
    for m in MODELS:  # warm-up: every replica and the router have their share
        assert (
            httpx.post(f"{base}/v1/classify", json={"model": m, "texts": TEXTS}, timeout=60).status_code
            == 200
        )
    sampler = BusySampler()
    try:
        first = wait_for_account(base, 2)  # fetched after the sampler started: a later tick is inside it
        v0 = wait_for_account(base, first["nodes"][ours(first)]["ticks"] + 1)
        n0 = v0["nodes"][ours(v0)]["ticks"]

        def one(i: int) -> dict[str, Any]:
            r = httpx.post(f"{base}/v1/classify", json={"model": MODELS[i % 3], "texts": TEXTS}, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()["energy"]

        with cf.ThreadPoolExecutor(8) as pool:
            tags = list(pool.map(one, range(150)))
        v1 = wait_for_account(base, n0 + 3)
        time.sleep(0.1)
    finally:
        sampler.stop()

    # every tag: end to end, model + serving overhead, labelled estimate; every request did work in
    # its replica and in the router, so neither part is ever 0 J (also while an extrapolation
    # overshoot settles: share.py)
    for tag in tags:
        assert tag["source"] == "estimate" and tag["measured"] is False
        assert tag["model_j"] > 0, tag
        assert tag["overhead_j"] is not None and tag["overhead_j"] > 0, tag
        assert tag["joules"] == pytest.approx(tag["model_j"] + tag["overhead_j"], rel=1e-9)
        assert tag["scope"] == "model+serving"
        assert sum(tag["domains_j"].values()) == pytest.approx(tag["joules"], rel=1e-9)
        assert sum(tag["nodes_j"].values()) == pytest.approx(tag["joules"], rel=1e-9)

    node = ours(v1)
    a0, a1 = v0["nodes"][ours(v0)], v1["nodes"][node]
    delta = assert_account_closes(a0, a1, sampler)
    # our replicas and router: each a group of the account; the replicas never sum past the node
    deployments = v1["deployments"]
    replica_sum = sum(r["metered_j"] for d in deployments.values() for r in d["replicas"].values())
    assert replica_sum <= a1["metered_j"]
    groups = {r["group"] for d in deployments.values() for r in d["replicas"].values()}
    assert all(g in a1["groups"] and a1["groups"][g]["kind"] == "replica" for g in groups)
    # each counter's most power, which no share moves faster than: every core at the estimate's TDP,
    # all of the memory (the test's own /proc/meminfo) at its W/GB
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]
    most = {"cpu:node": 65.0, "dram:node": int(mem_kb) * 1024 / 1e9 * 0.375}
    assert a1["max_power_w"] == pytest.approx(most), a1["max_power_w"]
    assert all(
        r["max_power_w"] == a1["max_power_w"] for d in deployments.values() for r in d["replicas"].values()
    )
    overhead = v1["serving_overhead"]
    assert overhead["group"] in a1["groups"] and a1["groups"][overhead["group"]]["kind"] == "router"
    # every share states how far its reading can be from exact (a tag's uncertainty is twice it)
    edges = [r["edge_error_j"] for d in deployments.values() for r in d["replicas"].values()]
    assert None not in edges and overhead["edge_error_j"] is not None, (edges, overhead)
    # request-level closure: what the replicas' and the router's ledgers split equals their groups'
    # share in the account, up to what is pending (one account period of extrapolation)
    ledger_j = replica_sum + overhead["metered_j"]
    account_j = sum(a1["groups"][g]["j"] for g in groups | {overhead["group"]})
    pending = sum(abs(r.get("pending_j", 0.0)) for d in deployments.values() for r in d["replicas"].values())
    assert ledger_j <= account_j + pending + 0.01 * delta.metered_j
    tag_j = sum(t["joules"] for t in tags)
    assert 0 < tag_j <= delta.metered_j
    # CodeCarbon on the same node since this app's replicas joined (energy/crosscheck.py): another
    # tool's estimate built another way (its TDP table x CPU load, RAM per DIMM), so only the order of
    # magnitude is comparable here; a node counter counted once per replica would fall outside
    cc = a1["codecarbon"]
    assert cc["error"] is None and cc["energy_j"] > 0, cc
    assert 0 < cc["account_metered_j"] <= a1["metered_j"]
    assert 0.1 < cc["ratio"] < 10, cc
    print(
        f"\nnode {node}: metered {delta.metered_j:.2f} J = baseline {delta.baseline_j:.2f} + groups "
        f"{ {k: round(a1['by_kind_j'].get(k, 0) - a0['by_kind_j'].get(k, 0), 2) for k in a1['by_kind_j']} }; "
        f"{len(tags)} tags sum {tag_j:.2f} J (model {sum(t['model_j'] for t in tags):.2f}, overhead "
        f"{sum(t['overhead_j'] for t in tags):.2f}); /proc/stat cpu J in [{delta.cpu_low_j:.2f},"
        f" {delta.cpu_high_j:.2f}] vs account {delta.cpu_j:.2f}; CodeCarbon {cc['energy_j']:.2f} J "
        f"(cpu {cc['cpu_j']:.2f}, ram {cc['ram_j']:.2f}) vs account {cc['account_metered_j']:.2f} J over "
        f"{cc['since_s']:.1f} s"
    )
