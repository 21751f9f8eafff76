"""An energy agent that dies (OOM kill, node hiccup) is replaced, through real Ray Serve and HTTP: the
answers while it is gone say so (``unavailable``, or ``meter_gap`` for a window open across the gap)
instead of carrying energy nobody metered, answers after it carry energy again within a bounded time,
and the new agent's node account closes and agrees with /proc/stat read by the test itself."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx
import psutil
import pytest

from serve_app.energy.agents import AGENT_NAMESPACE, AGENT_PREFIX
from tests.conftest import traditional_config
from tests.integration.test_node_account import ACCOUNT, BusySampler, assert_account_closes, energy_view, ours

pytestmark = pytest.mark.slow

MODEL = "tfidf-logreg"
TEXTS = ["Du bist so ein dummer Idiot, halt die Klappe", "Heute scheint in Berlin die Sonne."] * 4
RECOVERY_S = 30.0
MOST_W = 65.0  # the estimate's whole-node TDP (the default configuration): no tag's power exceeds it


def _agent_pid() -> int:
    """The PID of this node's energy agent, as the agent itself says (``where``)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    agent = ray.get_actor(AGENT_PREFIX + node_id, namespace=AGENT_NAMESPACE)
    return int(ray.get(agent.where.remote(), timeout=30)["pid"])


class Load:
    """Classify requests one after another in a thread, keeping (sent, answered, tag) per answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[float, float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                r = client.post(f"{self.base}/v1/classify", json={"model": MODEL, "texts": TEXTS})
                assert r.status_code == 200, r.text
                self.answers.append((t0, time.monotonic(), r.json()["energy"]))
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


GAP_FLAGS = {"meter_gap", "overhead_meter_gap", "overhead_not_metered"}


def _measured(tag: dict[str, Any]) -> bool:
    return tag["joules"] is not None and tag["source"] == "estimate"


def _whole(tag: dict[str, Any]) -> bool:
    """Energy of the model and of serving, neither missing a part."""
    return _measured(tag) and tag["overhead_j"] is not None and not GAP_FLAGS & set(tag["flags"])


def _plausible(answer: tuple[float, float, dict[str, Any]]) -> None:
    """A figure within what the node can draw while the request was out: the replica's and the router's
    share each move at most at the node's most power since their meter's previous read (a second at most:
    the sampler's coarse period)."""
    sent, done, tag = answer
    assert 0 < tag["joules"] <= 2 * MOST_W * (done - sent + 1.0), tag


def test_killed_agent_is_replaced_and_gap_flagged(serve_app_factory, demo_artifacts) -> None:
    base = serve_app_factory(
        traditional_config(demo_artifacts, [MODEL]), name="agentrec", route_prefix="/agentrec"
    )
    for _ in range(3):  # warm-up: the replica's and the router's shares exist
        r = httpx.post(f"{base}/v1/classify", json={"model": MODEL, "texts": TEXTS}, timeout=60)
        assert r.status_code == 200 and _measured(r.json()["energy"]), r.text
    before = r.json()["energy"]
    old_pid = _agent_pid()

    load = Load(base)
    sampler = BusySampler()
    try:
        time.sleep(2)
        assert psutil.Process(old_pid).is_running()
        killed_s = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)

        # recovery: an answer sent after the kill, with energy of the same source, no gap flag
        deadline = killed_s + RECOVERY_S
        recovered_s = None
        while time.monotonic() < deadline and recovered_s is None:
            time.sleep(0.25)
            for sent, _done, tag in list(load.answers):
                if sent > killed_s and _whole(tag):
                    gaps = [a for a in load.answers if a[0] > killed_s and not _measured(a[2])]
                    if gaps and sent > gaps[-1][0]:  # after the outage, not before the share saw it
                        recovered_s = sent
                        break
        assert recovered_s is not None, (
            f"no answer with energy within {RECOVERY_S} s of killing the agent: "
            f"{[(round(s - killed_s, 2), t['source'], t['flags']) for s, _, t in load.answers[-5:]]}"
        )
        time.sleep(3)  # a few more answers after recovery
        v0 = _wait_new_account(base, old_pid, 2)
        n0 = v0["nodes"][ours(v0)]["ticks"]
        v1 = _wait_new_account(base, old_pid, n0 + 4)
        time.sleep(0.1)
    finally:
        load.stop()
        sampler.stop()

    after_kill = [(s, d, t) for s, d, t in load.answers if s > killed_s]
    # while the agent was gone: no energy (``unavailable``, no joules), or a window open across the gap
    # flagged ``meter_gap`` that keeps only what was metered around it
    gap_answers = [a for a in after_kill if a[0] < recovered_s]
    gap = [a[2] for a in gap_answers]
    unavailable = [t for t in gap if not _measured(t)]
    assert unavailable, "no answer said the meter was gone"
    for t in unavailable:
        assert t["source"] == "unavailable" and t["joules"] is None and t["measured"] is False, t
    # the first answers after the kill may still extrapolate (before the shares saw the agent gone);
    # from the first unavailable answer on, every answer with energy before recovery says what it
    # lacks (the gap's part of the model's or of serving's energy)
    first_gap = next(i for i, t in enumerate(gap) if not _measured(t))
    # ... which it does at its next poll (every half account period, 0.5 s; 3 s allows for this VM)
    assert gap_answers[first_gap][0] - killed_s < 3.0, gap_answers[first_gap][0] - killed_s
    for t in gap[first_gap:]:
        assert not _measured(t) or GAP_FLAGS & set(t["flags"]), t
    for a in gap_answers:
        if _measured(a[2]):
            _plausible(a)
    # after recovery: energy on every answer again, from the same source, never more than the node
    # can draw over the request
    later = [a for a in after_kill if a[0] >= recovered_s]
    assert len(later) >= 3
    for a in later:
        t = a[2]
        assert _whole(t) and t["source"] == before["source"] and t["measured"] == before["measured"], t
        assert t["model_j"] > 0 and t["overhead_j"] > 0, t
        _plausible(a)
    assert recovered_s - killed_s <= RECOVERY_S

    # a new agent (another process) with a new account that started after the kill
    new_pid = _agent_pid()
    assert new_pid != old_pid
    node = ours(v1)
    a0, a1 = v0["nodes"][ours(v0)], v1["nodes"][node]
    assert a1["window_s"][0] > killed_s, (a1["window_s"], killed_s)
    # the new account closes over the window after recovery, and its CPU counter lies within the
    # test's own /proc/stat
    delta = assert_account_closes(a0, a1, sampler)
    # the replica and the router are groups of the new account again (their shares re-joined it)
    (replica,) = v1["deployments"][MODEL]["replicas"].values()
    assert replica["group"] in a1["groups"] and a1["groups"][replica["group"]]["kind"] == "replica"
    overhead = v1["serving_overhead"]
    assert overhead["state"] == "metered", overhead
    assert overhead["group"] in a1["groups"] and a1["groups"][overhead["group"]]["kind"] == "router"
    # nothing counted twice: what the replica's ledger metered over the window is its group's part of
    # the new account, up to what is not settled yet at either end
    (r0,) = v0["deployments"][MODEL]["replicas"].values()
    d_ledger = replica["metered_j"] - r0["metered_j"]
    g0 = a0["groups"].get(replica["group"], {"j": 0.0})["j"]
    d_group = a1["groups"][replica["group"]]["j"] - g0
    slack = abs(replica["pending_j"]) + abs(r0["pending_j"]) + 0.01 * delta.metered_j
    assert d_ledger <= d_group + slack, (d_ledger, d_group, slack)
    inside = [t for s, d, t in after_kill if a0["window_s"][1] <= s and d <= a1["window_s"][1]]
    assert inside and sum(t["joules"] for t in inside) <= delta.metered_j
    print(
        f"\nagent {old_pid} killed; {len(unavailable)} unavailable and "
        f"{sum(1 for t in gap if _measured(t))} gap answers; energy again after {recovered_s - killed_s:.1f} s "
        f"(new agent {new_pid}); new account over {a1['window_s'][1] - a0['window_s'][1]:.1f} s: metered "
        f"{delta.metered_j:.2f} J, /proc/stat cpu J in [{delta.cpu_low_j:.2f}, "
        f"{delta.cpu_high_j:.2f}] vs {delta.cpu_j:.2f}; replica ledger {d_ledger:.2f} J vs group "
        f"{d_group:.2f} J"
    )


def _wait_new_account(base: str, old_pid: int, ticks: int) -> dict[str, Any]:
    """The energy view once this app's account on a new agent has ``ticks`` ticks."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            view = energy_view(base)
        except AssertionError:  # the registry or an agent did not answer: ask again
            time.sleep(0.5)
            continue
        acct = [a for a in view["nodes"].values() if a["account"] == ACCOUNT]
        if acct and acct[0]["ticks"] >= ticks and _agent_pid() != old_pid:
            return view
        time.sleep(0.5)
    raise TimeoutError("no account on a new agent")
