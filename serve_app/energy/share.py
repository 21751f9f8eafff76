"""A replica's (or router's) meter on the node account: its group's share, fine-grained (step 2).

The node account splits the node's counters to process groups every ``account_period_s`` (coarse:
reading every process costs CPU). Requests need a finer clock. This meter reconciles the two so that
closure still holds exactly:

- a poller asks the node's agent for the group's exact cumulative share ``E`` (per counter) at the
  account's last tick, every half ``account_period_s``, and takes it when the tick is new;
- between ticks, ``read()`` extrapolates CPU and DRAM counters by the CPU time of the group's processes
  since the tick (the account lists them at each tick: the replica, its children such as vLLM's engine
  core and workers, and the processes it claims; each read from the kernel's per-process CPU clock,
  ``procs.process_cpu_s``, in nanoseconds; the CPU time at the tick is interpolated from the values its
  reads recorded) x the node's last joules per CPU-second (``rate``; a router's includes its proxy
  part); GPU counters move only at ticks;
- the value shown never steps back, never stands still while the process works, and never jumps:
  - in step, it moves by the extrapolation since the last read;
  - an **overshoot** (the extrapolation ran ahead of the exact share, e.g. the node's rate fell) is
    settled by advancing at ``SETTLE_RATE`` (half) the rate until the exact share catches up (each
    CPU-second closes half a rate of the gap), so a request inside it still gets its work's energy,
    at half weight, instead of 0 J;
  - an **undershoot** (the exact share at a tick ran ahead of what was shown: a process joined the
    group with CPU time of its own, DRAM ran ahead of CPU time, and every GPU counter, which moves
    only at ticks) is released on top of the extrapolation at a constant power, the gap when the tick
    arrived / ``period_s``, so it is shown within one account period of wall time. The gap is energy
    the group drew over the last period; it reaches the requests (or idle) of the next one by their
    duration, at the group's average power then, instead of landing whole in the one request that
    happened to be open when the tick arrived (a 30 ms request showed 10.7 J, 356 W on a 2-core VM);
  - and it never moves faster than the counter's device can draw (``max_power_w`` from the account:
    RAPL's power limits, NVML's highest limit, the estimate's TDP): the group's exact share of a tick
    is at most the node's, so an extrapolation beyond it is wrong (the rate, in J per CPU-second of
    the node, can be high after a quiet interval: a draw above the baseline with little CPU time to
    split it by). What the bound holds back stays pending, settled as an undershoot.

So over any window the ledger fed by this meter splits exactly the group's share, give or take
``pending_j = shown - E`` at the window's end (reported in the replica's snapshot: positive = an
overshoot held, negative = exact energy not shown yet), which the next tick settles. The ledger's
per-request split is unchanged (the replica's requests by weight, idle when none is open).

How far a window's energy can be from what the account would give it (an account ticked at the
window's two ends): the shown value is the extrapolation minus the pending gap, so a window's error
is the extrapolation's drift from the exact share over the window plus what the meter moved on top
of the extrapolation inside it (releases and settling: known, counted in every reading as the
cumulative ``Reading.adjusted_j``; the ledger gives each request the window's part). The drift is
what a tick shows: at each new tick the exact share is set beside the extrapolation from the tick
before (its miss over that period, summed over counters); the meter's ``edge_error_j`` is the largest
of its last ``MIN_EDGE_TICKS`` misses, or of the older ones (up to ``EDGE_TICKS``) aged by the
account's ``RATE_DECAY`` per tick when that is more (a step change's drift halves with each tick as
the account's rate follows it), and a window (at most two pieces of periods) drifts by at most twice
that, whatever its length. A tag's uncertainty is then twice ``edge_error_j`` plus its
window's adjustment, instead of its average power x the account period (which flagged every request
shorter than a period as uncertain by 20-70 times its value). A gap left pending (an overshoot held
while the group is idle) is no new error at every tick: only the part of it a window is moved by.

The group's CPU clock is the kernel's, per process (``procs.process_cpu_s``): a thread still on a
CPU adds its time at the next scheduler tick (4 ms here) or when it stops, so a window of a few ms
can miss work that was still running at its end (a pipeline stage's tag then lists only the other
node); the next window gets it. The clock continues when the group's processes change.

An agent that dies (an OOM kill, a node hiccup) is replaced from here: when a poll fails with
``ActorDiedError``, the poller calls the ``restart`` it was built with (``footprint.account_meter``:
``agents.agent_for``, the same name and node pinning; the same account; the group's processes and GPUs
claimed again), at most once every ``RECOVER_EVERY_S``. The new account starts
at 0 J with no earlier reading, so the share starts again from its first tick: the next ``read()``
raises (if none did while the agent was gone), its reader takes the reading after as a new origin
(``Ledger.rebase``), and the energy between the old account's last tick and the new one's first is
nobody's: requests while the agent is gone are ``unavailable``, one open across the gap is flagged
``meter_gap``. Nothing of the old account is counted again (the ledger's origin moves; the old
account's ticks were attributed when they came).

Units: J, s. ``read()`` makes no remote call.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from serve_app.energy.account import RATE_DECAY, share_source
from serve_app.energy.base import MeterError, MeterInfo, Reading, now_s
from serve_app.energy.procs import process_cpu_s

log = logging.getLogger(__name__)
RPC_TIMEOUT_S = 5.0
SETTLE_RATE = 0.5  # the fraction of the extrapolation rate at which a shown overshoot keeps moving
EDGE_TICKS = 8  # the ticks whose largest miss is the meter's ``edge_error_j``
MIN_EDGE_TICKS = 3  # ... once it has seen this many (before: the average power x period bound)
RECOVER_EVERY_S = 5.0  # a dead agent is got or started again at most this often (per share)
Restart = Callable[[], tuple[Any, str]]
"""Gets or starts the node's agent and the share's account there, and claims the group's processes and
GPUs in it: (the agent, the account's key)."""


class RecoverTimer:
    """When a dead agent may be got or started again: at most once every ``RECOVER_EVERY_S`` (a share's
    own agent, and each remote node's agent of a `MultiNodeMeter`), so a node where starting one fails
    is not asked on every poll."""

    def __init__(self) -> None:
        self._last_s = float("-inf")  # the last attempt (monotonic s)

    def due(self) -> bool:
        """True, and the attempt counted from now, if the last one is ``RECOVER_EVERY_S`` or more ago."""
        now = now_s()
        if now - self._last_s < RECOVER_EVERY_S:
            return False
        self._last_s = now
        return True


class AccountShareMeter:
    """The group of process ``pid`` in the node account of ``agent`` (a Ray actor handle)."""

    def __init__(
        self,
        agent: Any,
        node: str,
        period_s: float,
        pid: int | None = None,
        fetch: Callable[[int], dict[str, Any]] | None = None,
        account: str = "",
        claimed_pids: Sequence[int] = (),
        unmatched_gpus: Sequence[str] = (),
        own_group: bool = False,
        restart: Restart | None = None,
    ) -> None:
        """``fetch``: how to ask for the share (default: ``agent.share.remote`` through Ray, of the
        account ``account``); ``claimed_pids``: processes outside this tree in the group (listed).
        Until the first share lists the group's processes, ``pid`` and ``claimed_pids`` stand for them.
        ``unmatched_gpus``: GPUs of the group's plan that match no counter of the account (their
        energy is in no share; ``footprint.unmatched_gpu_nodes`` flags the tags).
        ``own_group``: take only a share of the process's own group (``replica:<pid>``,
        ``router:<pid>``): a Ray worker that just took a replica's or router's actor is still in
        ``ray_system`` until the account's next tick sees its new title, and a share of that group
        (its processes, its whole history) would be read as this process's, its next tick as a huge
        overshoot. Until then the meter has no share (``error`` says why).
        ``restart``: how to replace ``agent`` when it dies (module doc); None: it is not replaced."""
        self.agent = agent
        self.account = account
        self.claimed_pids = tuple(claimed_pids)
        self.unmatched_gpus = tuple(unmatched_gpus)
        self.own_group = own_group
        self._fetch = fetch or self._ray_fetch
        self._restart = restart if fetch is None else None  # a dead agent is replaced (asked through Ray)
        self.node = node
        self.period_s = period_s
        self.pid = pid or os.getpid()
        self._pids: tuple[int, ...] = (self.pid, *self.claimed_pids)  # the group's processes
        self._last_cpu_s: dict[int, float] = {}  # each one's CPU time when last read (s)
        self._clock_base_s = 0.0  # keeps the group's clock continuous when its processes change (s)
        self._lock = threading.Lock()
        self._exact: dict[str, float] = {}
        self._rate: dict[str, float] = {}
        self._cpu_at_share_s = self._cpu_clock()
        self._shown: dict[str, float] = {}
        self._cpu_at_read_s = self._cpu_at_share_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=512)  # (monotonic s, CPU s)
        self._read_s = now_s()  # the last read (monotonic s)
        self._tick_s: float | None = None  # when a tick not read yet arrived (monotonic s)
        self._release_w: dict[str, float] = {}  # an undershoot's release power, per counter (W)
        self._max_w: dict[str, float] = {}  # the most each counter's device can draw (W)
        self._misses: deque[float] = deque(maxlen=EDGE_TICKS)  # the extrapolation's miss per period (J)
        self._missed_j = 0.0  # every miss, summed (``MeterInfo.missed_j``)
        self._gap_is_miss = False  # the group's processes changed at the last tick: its gap is the miss
        self._adjusted_j = 0.0  # cumulative |shown - extrapolated| moves (``Reading.adjusted_j``)
        self.group: str | None = None
        self.sources: dict[str, str] = {}
        self._gpus: frozenset[str] = frozenset()  # the GPU counters the group owns
        self.error: str | None = "no share yet"
        self._raised = False  # a read failed since the last share was taken
        self._resync = False  # the first read after such an outage shows the exact share as it is
        self._agent_dead = False  # the agent died and is not replaced yet
        self._loss_unseen = False  # ... and no read raised since: the next one must (see `read`)
        self._recover = RecoverTimer()  # when to try replacing it
        self.agents_replaced = 0
        self.ticks = 0
        self._info = self._make_info()
        self._stop = threading.Event()
        self._poll()
        self._thread = threading.Thread(target=self._poll_loop, name="accuwatt-share", daemon=True)
        self._thread.start()

    # -- polling -------------------------------------------------------------------------------------
    def _ray_fetch(self, pid: int) -> dict[str, Any]:
        import ray

        out: dict[str, Any] = ray.get(self.agent.share.remote(pid, self.account), timeout=RPC_TIMEOUT_S)
        return out

    def _poll(self) -> None:
        try:
            out = self._fetch(self.pid)
        except Exception as exc:  # agent gone, timeout: keep the last share
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            if self._restart is not None and agent_died(exc):
                self._agent_lost()
            return
        if "error" in out:
            self.error = str(out["error"])
            return
        if self.own_group and str(out["group"]).rpartition(":")[2] != str(self.pid):
            self.error = f"process {self.pid} is in group {out['group']!r}, not its own (yet)"
            return
        failing = self._failing_of(out)
        if failing:  # a counter the group draws on is not read: its figure would not be whole
            self.error = f"node counters failing on {self.node}: " + "; ".join(
                f"{k}: {e}" for k, e in sorted(failing.items())
            )
            return
        with self._lock:
            self._agent_dead = False
            # back after an outage that a read saw (the reader's ledger starts again there): see `_read`
            outage, self._raised = self._raised and bool(self._exact), False
            self._resync = self._resync or outage
            self.error = None
            if self._exact and int(out["ticks"]) == self.ticks:
                return  # the same tick again: keep extrapolating from where it arrived
            # every node counter, at 0 while the group has no share of it yet: a counter that showed
            # up later would start a ledger at its value then, and that energy would be nobody's
            exact = {**dict.fromkeys(out["sources"], 0.0), **out["energy_j"]}
            pids = tuple(out.get("pids") or self._pids)
            if set(pids) == set(self._pids):
                cpu_s = self._cpu_at(float(out["t_s"]))
                if self._exact and not outage:  # over an outage the extrapolation missed nothing
                    self._add_miss(self._miss(exact, cpu_s - self._cpu_at_share_s))
                self._cpu_at_share_s = cpu_s
            else:  # another set of processes: the extrapolation from the tick starts now (the CPU
                # since the tick shows at the next), while the CPU since the last read still counts
                self._gap_is_miss = bool(self._exact)  # no extrapolation to set beside: the next read's gap
                self._cpu_at_share_s = self._switch_pids(pids)
            self._exact, self._rate = exact, dict(out["rate_j_per_cpu_s"])
            self.group, self.sources, self.ticks = out["group"], dict(out["sources"]), int(out["ticks"])
            self._gpus = frozenset(out.get("gpus") or ())
            self._max_w = {k: float(w) for k, w in (out.get("max_power_w") or {}).items() if k in exact}
            self._tick_s = now_s()
            self._info = self._make_info()  # read on every request's tag: built here, once per share

    # -- a dead agent, replaced ------------------------------------------------------------------------
    def _agent_lost(self) -> None:
        """The agent died: get or start the node's agent again (at most every ``RECOVER_EVERY_S``)."""
        with self._lock:
            if not self._agent_dead:
                self._agent_dead = self._loss_unseen = True
                log.warning("energy agent on %s died; getting or starting a new one", self.node)
        if self._stop.is_set() or not self._recover.due():
            return
        try:
            self._replace_agent()
        except Exception as exc:  # tried again after RECOVER_EVERY_S
            self.error = f"energy agent on {self.node} died; starting a new one failed: {exc}"[:300]
            log.warning("%s", self.error)

    def _replace_agent(self) -> None:
        assert self._restart is not None
        agent, key = self._restart()
        with self._lock:
            # a new account: 0 J at its start, no earlier reading. The share starts again at its first
            # tick, and its reader takes that reading as a new origin (`read` raises once before it):
            # what the reader took of the old account stays, and nothing of it is counted again
            self.agent, self.account = agent, key
            self._exact, self._rate, self._shown, self._release_w = {}, {}, {}, {}
            self._tick_s, self._gap_is_miss, self.ticks = None, False, 0
            self.agents_replaced += 1
        log.warning("energy agent on %s replaced (%d so far)", self.node, self.agents_replaced)

    def _failing_of(self, out: dict[str, Any]) -> dict[str, str]:
        """The account's failing counters this group draws on: CPU and DRAM (every process does), and
        the GPUs it owns or has energy on (a CPU classifier on a node that lost a GPU keeps its figures)."""
        gpus, energy = frozenset(out.get("gpus") or ()), out.get("energy_j") or {}
        return {k: str(e) for k, e in (out.get("failing") or {}).items() if _draws_on(k, gpus, energy)}

    def _miss(self, exact: dict[str, float], cpu_s: float) -> float:
        """How far the extrapolation from the previous tick (``cpu_s`` of the group's CPU time since)
        missed the new tick's ``exact`` share, summed over the counters both ticks had (J)."""
        return sum(
            abs(v - self._exact[k] - (0.0 if k.startswith("gpu:") else self._rate.get(k, 0.0)) * cpu_s)
            for k, v in exact.items()
            if k in self._exact
        )

    def _add_miss(self, miss: float) -> None:
        self._misses.append(miss)
        self._missed_j += miss

    def _cpu_at(self, t_s: float) -> float:
        """The group's CPU time at monotonic time ``t_s`` (the account's tick), interpolated from the
        (time, CPU time) pairs its reads recorded: the share covers CPU up to the tick, so the
        extrapolation must start there, not when the share arrived (which would hold the counter)."""
        self._samples.append((now_s(), self._cpu_clock()))
        pts = list(self._samples)
        before = [p for p in pts if p[0] <= t_s]
        after = [p for p in pts if p[0] >= t_s]
        if not before or not after:
            return pts[0][1] if not before else before[-1][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 <= t0 else c0 + (c1 - c0) * (t_s - t0) / (t1 - t0)

    def _switch_pids(self, pids: tuple[int, ...]) -> float:
        """Clock the group's new set of processes from now on, continuing the old set's clock (a
        compile worker joins or leaves; returns the clock now). Restarting it at the new set's CPU
        time lost the old set's CPU since the last read: a request whose work ran before the switch
        then moved by nothing (a pipeline stage's tag without its node)."""
        before = self._cpu_clock()
        self._pids = pids
        self._last_cpu_s = {p: c for p, c in self._last_cpu_s.items() if p in pids}
        self._samples.clear()
        self._clock_base_s += before - self._cpu_clock()
        return before

    def _cpu_clock(self) -> float:
        """CPU time (s) of the group's processes, summed, on a clock that continues across changes of
        the set (`_switch_pids`). A process gone keeps the CPU time last read (a vLLM compile worker
        that exits between ticks): dropping it would step the clock back, and the share would read
        that as an overshoot and move at half its rate until the next tick."""
        total = self._clock_base_s
        for pid in self._pids:
            c = process_cpu_s(pid)
            if c is None:
                c = self._last_cpu_s.get(pid, 0.0)
            else:
                self._last_cpu_s[pid] = c
            total += c
        return total

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.period_s / 2):  # a new tick is seen within half a period
            self._poll()

    # -- Meter ---------------------------------------------------------------------------------------
    @property
    def source(self) -> Any:
        return self._info.source

    @property
    def info(self) -> MeterInfo:
        return self._info

    def _make_info(self) -> MeterInfo:
        return MeterInfo(
            source=share_source(self._label_sources()),
            # the counters it shares, then the processes its group covers (its own tree, claimed ones)
            devices=(*sorted(self.sources), *(f"cpu-process:{p}" for p in (self.pid, *self.claimed_pids))),
            resolution_j=1e-3,
            update_period_s=self.period_s,
            node=self.node,
            edge_error_j=self._edge_error_j(),
            missed_j=self._missed_j,
            max_power_w=dict(self._max_w),
            notes=(
                f"node account share of group {self.group or '?'} (process {self.pid}): node counters "
                f"split to processes by CPU time every {self.period_s:g} s, extrapolated in between by "
                "the CPU time of the group's processes"
            ),
            extra={"group": self.group or "", "unmatched_gpus": ",".join(self.unmatched_gpus)},
        )

    def _label_sources(self) -> dict[str, str]:
        """The counters the group's energy comes from: CPU and DRAM (every process draws on them), and
        the GPUs it owns or has energy on (a CPU classifier on a GPU node is not labelled ``nvml``)."""
        return {k: s for k, s in self.sources.items() if _draws_on(k, self._gpus, self._exact)}

    def _edge_error_j(self) -> float | None:
        """The largest of the last ``MIN_EDGE_TICKS`` misses, or of older ones (up to ``EDGE_TICKS``)
        times ``RATE_DECAY`` per tick of age when that is more: after a step change of the node's
        power per CPU-second the account's rate closes ``1 - RATE_DECAY`` of the gap each tick, so the
        drift it left shrinks by that factor per tick. None until ``MIN_EDGE_TICKS`` misses were seen."""
        misses = list(self._misses)
        if len(misses) < MIN_EDGE_TICKS:
            return None
        aged = (m * RATE_DECAY**age for age, m in enumerate(reversed(misses)))
        return max(*misses[-MIN_EDGE_TICKS:], *aged)

    def read(self) -> Reading:
        with self._lock:
            if self.error is not None:  # its reader (a sampler) takes the next reading as a new origin
                self._raised, self._loss_unseen = True, False
            elif self._loss_unseen:  # the agent was replaced before any read saw it gone: this one does
                self._raised, self._loss_unseen = True, False
                raise MeterError(
                    f"node account: the energy agent on {self.node} was replaced; the energy since its "
                    "last tick is unknown"
                )
            return self._read()

    def read_with_pending(self) -> tuple[Reading, float]:
        """A reading and its ``pending_j`` at the same instant (a node agent serving a remote group)."""
        with self._lock:
            return self._read(), self._pending()

    def _read(self) -> Reading:
        if self.error is not None:  # the account's counters fail (or no share yet)
            raise MeterError(f"node account: {self.error}")
        t_s, cpu_now = now_s(), self._cpu_clock()
        self._samples.append((t_s, cpu_now))
        cpu_s = max(cpu_now - self._cpu_at_share_s, 0.0)
        since_read_s = max(cpu_now - self._cpu_at_read_s, 0.0)
        fresh, wall_s = self._tick_s is not None, t_s - max(self._read_s, self._tick_s or 0.0)
        read_dt_s = max(t_s - self._read_s, 0.0)
        self._cpu_at_read_s, self._read_s, self._tick_s = cpu_now, t_s, None
        gaps = 0.0
        # after an outage that ``read`` raised in (its sampler takes this reading as a new origin, the
        # outage as unknown: ``Ledger.rebase``), the shown share goes to where it is now: released over
        # a period, the outage's energy would reach the requests after it. A remote reader
        # (``read_with_pending``) holds the last values through short outages: its gap is released.
        resync, self._resync = self._resync, False
        for key, exact in self._exact.items():
            rate = 0.0 if key.startswith("gpu:") else self._rate.get(key, 0.0)  # GPUs: ticks only
            target, step = exact + cpu_s * rate, since_read_s * rate
            if key not in self._shown or resync:
                self._release_w.pop(key, None)  # (an overshoot held stays: never a step back)
                self._shown[key] = max(target, self._shown.get(key, target))
                continue
            gap = target - self._shown[key] - step  # > 0: an undershoot; < 0: an overshoot
            if fresh:  # a new tick: its undershoot is released over one account period
                self._release_w[key] = max(gap, 0.0) / self.period_s
                gaps += abs(gap)
            if gap <= 0:
                move = max(step + gap, SETTLE_RATE * step)
            else:
                move = step + min(gap, self._release_w.get(key, 0.0) * max(wall_s, 0.0))
            if key in self._max_w:  # never faster than the device can draw
                move = min(move, self._max_w[key] * read_dt_s)
            self._shown[key] += move
            self._adjusted_j += abs(move - step)
        if fresh and self._gap_is_miss:
            self._add_miss(gaps)
            self._gap_is_miss = False
            self._info = self._make_info()
        return Reading(t_s, dict(self._shown), self.source, adjusted_j=self._adjusted_j)

    def pending_j(self) -> float:
        """Shown minus exact share, summed over counters (J): the not-yet-settled part."""
        with self._lock:
            return self._pending()

    def _pending(self) -> float:
        return sum(self._shown.get(k, 0.0) - v for k, v in self._exact.items() if k in self._shown)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s + RPC_TIMEOUT_S + 1)


def agent_died(exc: BaseException) -> bool:
    """Whether a call failed because the agent's actor is dead (not a timeout or a busy agent): a share
    replaces its node's agent then, and an ``agents.MultiNodeMeter`` another node's."""
    try:
        from ray.exceptions import ActorDiedError
    except ImportError:  # pragma: no cover - Ray is a dependency
        return False
    return isinstance(exc, ActorDiedError)


def _draws_on(key: str, gpus: frozenset[str], energy_j: dict[str, float]) -> bool:
    """Whether a group's energy comes from counter ``key``: CPU and DRAM always (every process draws on
    them), a GPU when the group owns it or has energy on it."""
    return not key.startswith("gpu:") or key in gpus or energy_j.get(key, 0.0) > 0
