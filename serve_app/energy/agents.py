"""Energy across nodes: one energy agent per Ray node, and a meter that merges them.

A replica whose work spans nodes (pipeline stages, tensor/pipeline-parallel workers) draws energy on
every node its placement group uses. Layering stays as in ``base.py``: agents and this meter only read
cumulative counters; the ledger splits them among requests.

- :class:`NodeEnergyAgent`: a Ray actor pinned to one node (``NodeAffinitySchedulingStrategy``, hard),
  named ``accuwatt-energy-agent-<node id>`` in namespace ``accuwatt``, shared by every replica that
  watches processes there (``num_cpus=0``, detached: it outlives a replica, see :func:`stop_agents`).
  For each watching *group* (one replica) it keeps a node-level meter built by
  ``probe.make_node_meter``: NVML for the GPUs the group's workers use there, else RAPL (the whole
  package), else the CPU-time estimate of the PIDs it was told to watch (and their children).
- :class:`MultiNodeMeter`: the replica's ``Meter``. Its counter keys carry the node:
  ``"<domain>:<node>:<device>"`` (``cpu:head:process``, ``cpu:worker-1:process``, ``gpu:worker-1:0``), so
  ``Reading.domain_of`` still works and :func:`node_of_key` tells the node.

Read cost and staleness: ``read()`` is called per request, so it never makes a remote call. A poller
thread asks every remote agent every ``poll_period_s`` (one actor call per node, batched, with a
``rpc_timeout_s`` bound) and caches the answer; ``read()`` returns the local meter's fresh reading
merged with the cached remote counters, which may be up to ``poll_period_s + rpc_timeout_s`` old.
So both ends of a request's window wait for them: ``await settled(t)`` asks every agent at once, on
the replica's event loop, unless values asked for at ``t`` or later are held already (one actor round
trip). Without it, a request shorter than the poll period could close before any remote change
reached it, its remote work landing in the next interval (seen on a PP=2 engine: a tag without its
second node), and open on values up to a poll old, taking remote energy drawn before it. A node that
does not answer within ``rpc_timeout_s`` keeps its last values (``settled`` is False; the tag says
``remote_counters_late``). Conservation is unaffected either way (metered = attributed + idle holds
per key), and ``MeterInfo.lag_s`` reports the staleness bound: a late tag's uncertainty widens by it,
and the counters' physical bound allows for it. If a node has not answered for ``max_stale_s``,
``read()`` raises ``MeterError`` (tags turn ``unavailable`` instead of silently dropping that node's
energy).

A remote agent that dies (an OOM kill, a node hiccup) is replaced as a local share replaces its own
(``share.py``): when a poll fails with ``ActorDiedError`` (``share.agent_died``), the poller gets or
starts that node's agent again (``agent_for``: the same name and node pinning) and watches the group
there again with what it was watched with at start, at most once every ``share.RECOVER_EVERY_S`` per
node. The new agent's share of the group starts at 0 J with no earlier reading, so from the loss on
``read()`` raises (tags ``unavailable``) until the new agent's first answer, and at least once in all
(should no read come while it was gone): the reader takes the reading after as a new origin
(``Ledger.rebase``; a request open across the gap is flagged ``meter_gap``). The energy between the
old agent's last answer and the new share's first is nobody's, on every node of the replica (the
origin moves for all its counters); nothing of the old agent's is counted again. Answers the old
agent gave to asks made before its loss was seen are dropped (``_Remote.generation``), and the
cumulative ``adjusted_j`` / ``missed_j`` carry on from the old agent's last values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_app.config_common import EnergyConfig
from serve_app.energy.account import NodeAccount
from serve_app.energy.base import Meter, MeterError, MeterInfo, Reading, now_s
from serve_app.energy.crosscheck import NodeCodeCarbon, cross_check
from serve_app.energy.keys import RemoteProcesses, gpu_keys, node_key
from serve_app.energy.nodemeter import make_node_counters
from serve_app.energy.probe import make_node_meter
from serve_app.energy.share import AccountShareMeter, RecoverTimer, agent_died

log = logging.getLogger(__name__)

AGENT_NAMESPACE = "accuwatt"
AGENT_PREFIX = "accuwatt-energy-agent-"
DEFAULT_POLL_PERIOD_S = 0.1
DEFAULT_RPC_TIMEOUT_S = 2.0
MIN_MAX_STALE_S = 10.0
WATCH_TIMEOUT_S = 60.0  # how long a remote agent may take to start watching a group (s)
QUIET_AFTER_S = 10.0
"""An agent asked nothing for this long (no share meter polls it: every replica and router that used
its accounts is gone, and nobody reads ``/v1/energy``) is quiet: its accounts tick only every
``QUIET_PERIOD_S`` (each tick still splits the whole interval since the last, so closure is unchanged)
until the next question, which brings the ``account_period_s`` ticks back within one period."""
QUIET_PERIOD_S = 10.0


# -- the per-node agent ------------------------------------------------------------------------
class NodeEnergyAgentImpl:
    """Plain class behind the actor (testable without Ray)."""

    def __init__(self, node: str, node_id: str | None = None) -> None:
        self.node = node
        self.node_id = node_id
        self._groups: dict[str, Meter] = {}
        self._in_account: dict[str, str] = {}  # watched group -> key of the account it is a group of
        self._claimed: dict[str, list[int]] = {}  # ... and the processes it claimed there (watch order)
        self._watch_lock = threading.RLock()  # watch / unwatch (the actor serves calls concurrently)
        self._closed = threading.Event()
        self._accounts: dict[str, NodeAccount] = {}  # one per counters configuration (see account_key)
        self._account_lock = threading.Lock()
        self._codecarbon: NodeCodeCarbon | None = None  # started by the first account that asks for it
        self._cc_origin: dict[str, dict[str, float]] = {}  # account key -> its origin in the cross-check
        self._asked_s = time.monotonic()  # the last question (see QUIET_AFTER_S)
        self.quiet_after_s = QUIET_AFTER_S
        self.quiet_period_s = QUIET_PERIOD_S

    # -- the node account (one per node and counters configuration; see account.py) ------------------
    def start_account(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Start (or join) the node's account for this counters configuration; returns its key."""
        self._asked_s = time.monotonic()
        ecfg = EnergyConfig.model_validate(cfg)
        key = account_key(ecfg)
        with self._account_lock:
            if key not in self._accounts:
                account = NodeAccount(make_node_counters(ecfg, self.node), self.node, ecfg.idle_w)
                self._accounts[key] = account
                threading.Thread(
                    target=self._tick_loop,
                    args=(account, key, ecfg.account_period_s),
                    name="accuwatt-account",
                    daemon=True,
                ).start()
            if ecfg.codecarbon and key not in self._cc_origin:
                self._codecarbon = self._codecarbon or NodeCodeCarbon()
                self._cc_origin[key] = {
                    **self._codecarbon.energy_j(),
                    "account": self._accounts[key].snapshot()["metered_j"],
                    "t_s": time.monotonic(),
                }
            return {"node": self.node, "key": key, "sources": dict(self._accounts[key].sources)}

    def _tick_loop(self, account: NodeAccount, key: str, period_s: float) -> None:
        from serve_app.metrics import NodeMetrics

        metrics = NodeMetrics()
        last_tick_s = time.monotonic()
        while not self._closed.wait(period_s):
            now = time.monotonic()
            if now - self._asked_s > self.quiet_after_s and now - last_tick_s < self.quiet_period_s:
                continue  # quiet: nobody uses the account now
            last_tick_s = now
            try:
                account.tick()
                metrics.export(self.node, key, dict(account.sources), account.by_share_key())
            except Exception:  # a tick must never kill the agent
                log.exception("node account tick failed")

    def account(self, key: str) -> NodeAccount | None:
        """The account of counters configuration ``key`` itself, in this process (not a question: it
        does not wake a quiet agent)."""
        return self._accounts.get(key)

    def share(self, pid: int, key: str) -> dict[str, Any]:
        """The account's share of process ``pid``'s group (see ``NodeAccount.share_of_pid``)."""
        self._asked_s = time.monotonic()
        account = self._accounts.get(key)
        if account is None:
            return {"error": f"no node account {key!r} on {self.node}"}
        return account.share_of_pid(pid)

    def claim(self, key: str, pids: list[int], group_pid: int, gpu_ids: list[str]) -> list[str]:
        """Processes and GPUs (NVML indices or UUIDs) of this node that join the group of process
        ``group_pid``; returns the GPU ids that match no counter of the account (not metered)."""
        account = self._accounts.get(key)
        if account is None:
            return list(gpu_ids)
        keys, unmatched = gpu_keys(gpu_ids, account.gpus)
        account.claim(pids, group_pid)
        account.own_gpus(keys, group_pid)
        if unmatched:
            log.warning("GPUs %s of process %d match no NVML counter on %s", unmatched, group_pid, self.node)
        return unmatched

    def account_snapshot(self) -> list[dict[str, Any]]:
        """Every account of the node; with ``energy.codecarbon``, its ``codecarbon`` cross-check."""
        self._asked_s = time.monotonic()
        out = []
        for key, account in sorted(self._accounts.items()):
            snap = {**account.snapshot(), "account": key}
            if self._codecarbon is not None and key in self._cc_origin:
                snap["codecarbon"] = cross_check(self._codecarbon, self._cc_origin[key], snap["metered_j"])
            out.append(snap)
        return out

    def where(self) -> dict[str, Any]:
        import os

        return {"node": self.node, "node_id": self.node_id, "pid": os.getpid()}

    def watch(self, group: str, cfg: dict[str, Any], pids: list[int], gpu_ids: list[str]) -> dict[str, Any]:
        """Start metering ``pids`` / ``gpu_ids`` for ``group``; returns the meter's info as a dict.
        With ``energy.node_account`` they join this node's account as the group ``replica:<group>``
        (read back as its share: counted once, in this node's closure); otherwise a meter of the
        group's own (``probe.make_node_meter``)."""
        with self._watch_lock:
            self.unwatch(group)
            ecfg = EnergyConfig.model_validate(cfg)
            if ecfg.node_account and ecfg.meter != "off":
                return self._watch_in_account(group, ecfg, pids, gpu_ids)
            meter = make_node_meter(ecfg, pids, gpu_ids, self.node)
            self._groups[group] = meter
            return self._info(meter)

    def _info(self, meter: Meter) -> dict[str, Any]:
        i = meter.info
        return {
            "source": i.source,
            "devices": list(i.devices),
            "resolution_j": i.resolution_j,
            "update_period_s": i.update_period_s,
            "node": self.node,
            "max_power_w": dict(i.max_power_w),
            "notes": i.notes,
        }

    def _watch_in_account(
        self, group: str, cfg: EnergyConfig, pids: list[int], gpu_ids: list[str]
    ) -> dict[str, Any]:
        key = self.start_account(cfg.model_dump())["key"]
        account = self._accounts[key]
        name = f"replica:{group}"
        keys, unmatched = gpu_keys(gpu_ids, account.gpus)
        account.claim_group(pids, name, keys)
        self._in_account[group] = key
        self._claimed[group] = list(pids)
        # its share, exact at each tick and extrapolated in between by its processes' CPU time
        meter = AccountShareMeter(
            None,
            self.node,
            cfg.account_period_s,
            pid=pids[0] if pids else None,
            fetch=lambda _pid: account.share_of_group(name),
            claimed_pids=pids[1:],
            unmatched_gpus=unmatched,
        )
        self._groups[group] = meter
        gpu_source = gpu_read_source(account.sources, meter.info.source)
        return {**self._info(meter), "unmatched_gpus": unmatched, "gpu_source": gpu_source}

    def read(self, group: str) -> dict[str, Any]:
        """The group's cumulative counters (keys without node prefix) and, for an account share, what
        of them is not yet settled at a tick (``pending_j``). Units: J."""
        self._asked_s = time.monotonic()
        meter = self._groups.get(group)
        if meter is None:
            return {"error": f"group {group!r} not watched on {self.node}"}
        try:
            r, pending = (
                meter.read_with_pending() if isinstance(meter, AccountShareMeter) else (meter.read(), 0.0)
            )
        except MeterError as exc:
            return {"error": str(exc)}
        return {
            "energy_j": r.energy_j,
            "source": r.source,
            "pending_j": pending,
            "edge_error_j": meter.info.edge_error_j,
            "missed_j": meter.info.missed_j,
            "adjusted_j": r.adjusted_j,
            "t_s": r.t_s,
        }

    def unwatch(self, group: str) -> None:
        """Stop metering ``group``; its processes go back to their own titles' groups, or to another
        watched group that claimed them too (the latest such claim: a process two replicas claimed is
        in one group at a time, and stays claimed while one of them still watches it)."""
        with self._watch_lock:
            key = self._in_account.pop(group, None)
            released = self._claimed.pop(group, [])
            if key is not None:
                account = self._accounts[key]
                account.release_group(f"replica:{group}")
                for other, pids in self._claimed.items():  # watch order: the latest claim wins
                    shared = [p for p in pids if p in released]
                    if shared and self._in_account.get(other) == key:
                        account.claim_group(shared, f"replica:{other}")
            meter = self._groups.pop(group, None)
        if meter is not None:
            meter.close()

    def close(self) -> None:
        """Stop the accounts' ticks and every watched meter (the actor dies with its node otherwise)."""
        self._closed.set()
        for group in self.groups():
            self.unwatch(group)

    def groups(self) -> list[str]:
        return sorted({*self._groups, *self._in_account})


def agent_for(node_id: str, node: str) -> Any:
    """Get or create the agent of a node (a detached named actor pinned to it). ``node``: its accuwatt
    name (``topology.nodes``: the caller knows it, so that ``energy/`` does not import ``topology/``)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_cls: Any = ray.remote(num_cpus=0, max_concurrency=16)(NodeEnergyAgentImpl)  # type: ignore[call-overload]
    return actor_cls.options(
        name=AGENT_PREFIX + node_id,
        namespace=AGENT_NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(node, node_id)


def stop_agents() -> int:
    """Kill every accuwatt energy agent of the connected cluster; returns how many."""
    import ray

    n = 0
    for node_id in [str(x["NodeID"]) for x in ray.nodes()]:
        try:
            ray.kill(ray.get_actor(AGENT_PREFIX + node_id, namespace=AGENT_NAMESPACE))
            n += 1
        except ValueError:
            continue
    return n


# -- the replica's meter -----------------------------------------------------------------------
@dataclass
class _Remote:
    rp: RemoteProcesses
    agent: Any
    info: dict[str, Any]
    energy_j: dict[str, float] = field(default_factory=dict)
    source: str = "estimate"
    ok_s: float = 0.0
    asked_s: float = 0.0  # the latest ask the values held now answer (``settled``), this node's clock
    read_s: float = float("-inf")  # when the agent read the values held now, the agent's clock
    error: str | None = None
    pending_j: float = 0.0
    edge_error_j: float | None = None
    adjusted_j: float = 0.0  # the remote share's cumulative adjustment (``Reading.adjusted_j``)
    missed_j: float | None = None  # ... and its misses summed (``MeterInfo.missed_j``)
    generation: int = 0  # bumped when the agent is lost and when replaced: older answers are dropped
    lost: bool = False  # the agent died, and no answer of a replacement has come yet
    recover: RecoverTimer = field(default_factory=RecoverTimer)  # when to try replacing it
    replaced: int = 0  # agents replaced so far
    adjusted_base_j: float = 0.0  # replaced agents' last ``adjusted_j`` (it stays cumulative) ...
    missed_base_j: float = 0.0  # ... and ``missed_j``

    def take(self, asked_s: float, out: dict[str, Any], generation: int | None = None) -> bool:
        """The agent's answer to a read asked at ``asked_s``; False if it is an error. The agent serves
        reads concurrently (the poll thread's and a request's settle), so answers can come back in
        another order than they were read: values read before those held are dropped (a counter must
        never step back: from near zero that reads as a reset, and the whole value would count again),
        while the ask still counts as answered, since the values held were read after it. An answer
        to an ask of an older ``generation`` (an agent lost since) is dropped and counts as unanswered."""
        if generation is not None and generation != self.generation:
            return False
        if "error" in out:
            self.error = str(out["error"])
            return False
        if float(out["t_s"]) >= self.read_s:
            self.energy_j, self.source, self.read_s = dict(out["energy_j"]), out["source"], float(out["t_s"])
            self.pending_j = float(out.get("pending_j", 0.0))
            missed = _float_or_none(out, "missed_j")
            self.edge_error_j = _float_or_none(out, "edge_error_j")
            self.missed_j = None if missed is None else self.missed_base_j + missed
            self.adjusted_j = self.adjusted_base_j + float(out.get("adjusted_j", 0.0))
        self.ok_s, self.asked_s, self.error, self.lost = now_s(), max(self.asked_s, asked_s), None, False
        return True

    def replaced_by(self, agent: Any, info: dict[str, Any]) -> None:
        """A new agent watches the group: its share starts at 0 J, with no earlier reading."""
        self.agent, self.info = agent, info
        self.generation += 1
        self.energy_j, self.read_s, self.pending_j, self.edge_error_j = {}, float("-inf"), 0.0, None
        self.adjusted_base_j, self.missed_base_j = self.adjusted_j, self.missed_j or 0.0
        self.replaced += 1


class MultiNodeMeter:
    """The replica's local meter plus the agents of the other nodes it uses (see the module doc)."""

    def __init__(
        self,
        local: Meter,
        local_node: str,
        remotes: Iterable[RemoteProcesses],
        cfg: EnergyConfig,
        group: str,
        poll_period_s: float | None = None,
        rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
        max_stale_s: float | None = None,
    ) -> None:
        import ray

        self.local = local
        self.local_node = local_node
        self.group = group
        self.poll_period_s = poll_period_s or max(cfg.sample_period_s, DEFAULT_POLL_PERIOD_S)
        self.rpc_timeout_s = rpc_timeout_s
        self.max_stale_s = max_stale_s or max(MIN_MAX_STALE_S, 20 * self.poll_period_s)
        self._lock = threading.Lock()
        self._remotes: list[_Remote] = []
        self._cfg = cfg.model_dump()
        self._loss_unseen = False  # a remote agent was lost and no read raised since (see `read`)
        self._stop = threading.Event()
        for rp in remotes:
            agent = agent_for(rp.node_id, rp.node)
            info = ray.get(self._watch(agent, rp), timeout=WATCH_TIMEOUT_S)
            self._remotes.append(_Remote(rp, agent, info))
        self._remote_info = _RemoteInfo.of(self._remotes)
        self._poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="accuwatt-agents", daemon=True)
        self._thread.start()

    # -- polling --------------------------------------------------------------------------------
    def _watch(self, agent: Any, rp: RemoteProcesses) -> Any:
        """Have ``agent`` watch the group's processes and GPUs on its node (at start, and again on a
        replacement agent): an object ref to the meter's info."""
        return agent.watch.remote(self.group, self._cfg, list(rp.pids), list(rp.gpu_ids))

    def _poll_once(self) -> None:
        import ray

        asked_s, refs = self._ask()
        for r, (generation, ref) in zip(self._remotes, refs, strict=True):
            try:
                self._take(r, asked_s, ray.get(ref, timeout=self.rpc_timeout_s), generation)
            except Exception as exc:  # timeout, actor died: keep the last values
                self._failed(r, exc, generation)
        for r in self._remotes:
            if r.lost:
                self._recover(r)

    def _ask(self) -> tuple[float, list[tuple[int, Any]]]:
        """Ask every remote agent for the group's counters now: (when, (the agent's generation, an
        object ref) per remote)."""
        with self._lock:
            agents = [(r.generation, r.agent) for r in self._remotes]
        return now_s(), [(generation, agent.read.remote(self.group)) for generation, agent in agents]

    def _take(self, r: _Remote, asked_s: float, out: dict[str, Any], generation: int) -> bool:
        with self._lock:
            return r.take(asked_s, out, generation)

    def _failed(self, r: _Remote, exc: BaseException, generation: int) -> None:
        """A poll of ``r`` failed: keep its last values; if its agent died, it is lost (see the module
        doc): answers to asks before this one are dropped, and ``read`` raises until a new agent answers."""
        with self._lock:
            _failed(r, exc)
            if agent_died(exc) and generation == r.generation and not r.lost:
                r.lost, self._loss_unseen = True, True
                r.generation += 1
                log.warning("energy agent on %s died; getting or starting a new one", r.rp.node)

    def _recover(self, r: _Remote) -> None:
        """Get or start ``r``'s node agent again and watch the group there (the poller's thread; at most
        every ``RECOVER_EVERY_S``). A failure is tried again then."""
        import ray

        if self._stop.is_set() or not r.recover.due():
            return
        try:
            agent = agent_for(r.rp.node_id, r.rp.node)
            info = ray.get(self._watch(agent, r.rp), timeout=WATCH_TIMEOUT_S)
        except Exception as exc:
            with self._lock:
                r.error = f"energy agent on {r.rp.node} died; starting a new one failed: {exc}"[:300]
            log.warning("%s", r.error)
            return
        with self._lock:
            r.replaced_by(agent, info)
            self._remote_info = _RemoteInfo.of(self._remotes)
        log.warning("energy agent on %s replaced (%d so far)", r.rp.node, r.replaced)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_period_s):
            self._poll_once()

    async def settled(self, t_s: float) -> bool:
        """Make every remote counter held one asked for at ``t_s`` or later (an end of a request's
        window: the next ``read()`` then shows the remote work up to ``t_s``): unless held already,
        ask every agent now, on the replica's event loop. False if a node did not answer in
        ``rpc_timeout_s`` (its last values stay)."""
        with self._lock:
            if all(r.asked_s >= t_s for r in self._remotes):
                return True
        asked_s, refs = self._ask()
        ok = True
        for r, (generation, ref) in zip(self._remotes, refs, strict=True):
            try:
                out = await asyncio.wait_for(ref, self.rpc_timeout_s)
                ok = self._take(r, asked_s, out, generation) and ok
            except Exception as exc:  # timeout, actor died (replaced by the poller): keep the last values
                self._failed(r, exc, generation)
                ok = False
        return ok

    # -- Meter -----------------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.local_node, *(r.rp.node for r in self._remotes))

    @property
    def remote_pending_j(self) -> dict[str, float]:
        """Per other node, its account share's not-yet-settled part as of the last poll (J; 0 for a
        meter of the group's own)."""
        with self._lock:
            return {r.rp.node: r.pending_j for r in self._remotes}

    @property
    def unmatched_gpus(self) -> dict[str, list[str]]:
        """Per node, the planned GPU ids that match no counter of its account (not metered)."""
        out = {r.rp.node: list(r.info.get("unmatched_gpus") or []) for r in self._remotes}
        out[self.local_node] = list(getattr(self.local, "unmatched_gpus", ()))
        return {n: ids for n, ids in out.items() if ids}

    @property
    def sources_by_node(self) -> dict[str, str]:
        """Each node's source for telling whether it reads the replica's GPUs (``nvml``, ``rapl``,
        ``estimate``, ...): a node account share's GPU counters' source (see `gpu_read_source`), else
        its meter's."""
        local = self.local
        own = (
            gpu_read_source(local.sources, local.info.source)
            if isinstance(local, AccountShareMeter)
            else local.info.source
        )
        remote = {r.rp.node: str(r.info.get("gpu_source") or r.info["source"]) for r in self._remotes}
        return {self.local_node: own, **remote}

    @property
    def info(self) -> MeterInfo:
        """Read per request (each tag carries it): what the agents said at ``watch`` is merged once, in
        ``_RemoteInfo``; only the local meter's figures and the polled errors are taken each time."""
        li, ri = self.local.info, self._remote_info
        by_node = {self.local_node: li.source, **ri.sources}
        lag_s = self.poll_period_s + self.rpc_timeout_s
        edges = [li.edge_error_j, *(r.edge_error_j for r in self._remotes)]
        missed = [li.missed_j, *(r.missed_j for r in self._remotes)]
        return MeterInfo(
            source=_combined_source(list(by_node.values())),
            devices=tuple(f"{self.local_node}/{d}" for d in li.devices) + ri.devices,
            resolution_j=max(li.resolution_j, ri.resolution_j),
            update_period_s=max(li.update_period_s, ri.update_period_s),
            node=self.local_node,
            lag_s=lag_s,
            # every node's share extrapolates: their errors add; one counter as it is: the period bound
            edge_error_j=_sum_or_none(edges),
            missed_j=_sum_or_none(missed),
            max_power_w={
                **{node_key(k, self.local_node): w for k, w in li.max_power_w.items()},
                **ri.max_power_w,
            },
            notes=(
                f"{len(self.nodes)} nodes; remote counters polled every {self.poll_period_s:g} s "
                f"(stale by at most {lag_s:g} s). Local: {li.notes}"
            ),
            extra={
                "nodes": ",".join(self.nodes),
                "sources": ",".join(f"{n}={s}" for n, s in by_node.items()),
            },
        )

    def read(self) -> Reading:
        """The local counters and the latest remote ones, merged under one lock and stamped after the
        merge: readings of this meter are ordered in time, and each remote value is the newest the
        poller had when the stamp was taken (never an older value under a newer time). While a remote
        agent is lost, and once after if no read saw it, it raises: the reader's next reading is a new
        origin (module doc)."""
        with self._lock:
            lost = [r.rp.node for r in self._remotes if r.lost]
            if lost or self._loss_unseen:
                self._loss_unseen = False
                raise MeterError(
                    f"energy agent on {', '.join(lost)} died; waiting for a new one"
                    if lost
                    else "a remote energy agent was replaced; the energy since its last answer is unknown"
                )
            local = self.local.read()
            energy = {node_key(k, self.local_node): v for k, v in local.energy_j.items()}
            t = now_s()
            for r in self._remotes:
                if t - r.ok_s > self.max_stale_s:
                    raise MeterError(f"energy agent on {r.rp.node} silent for {t - r.ok_s:.1f} s: {r.error}")
                energy.update({node_key(k, r.rp.node): v for k, v in r.energy_j.items()})
            resets = frozenset(node_key(k, self.local_node) for k in local.reset_keys)
            return Reading(
                now_s(),
                energy,
                _combined_source([local.source, *(r.source for r in self._remotes)]),
                resets,
                local.adjusted_j + sum(r.adjusted_j for r in self._remotes),
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_period_s + self.rpc_timeout_s + 1)
        for r in self._remotes:
            with contextlib.suppress(Exception):
                r.agent.unwatch.remote(self.group)
        self.local.close()


def _float_or_none(out: dict[str, Any], key: str) -> float | None:
    value = out.get(key)
    return None if value is None else float(value)


@dataclass(frozen=True)
class _RemoteInfo:
    """What the other nodes' agents said of their counters when the group was watched (fixed after)."""

    sources: dict[str, str]
    devices: tuple[str, ...]
    resolution_j: float
    update_period_s: float
    max_power_w: dict[str, float]

    @classmethod
    def of(cls, remotes: list[_Remote]) -> _RemoteInfo:
        return cls(
            sources={r.rp.node: str(r.info["source"]) for r in remotes},
            devices=tuple(f"{r.rp.node}/{d}" for r in remotes for d in r.info["devices"]),
            resolution_j=max((float(r.info["resolution_j"]) for r in remotes), default=0.0),
            update_period_s=max((float(r.info["update_period_s"]) for r in remotes), default=0.0),
            max_power_w={
                node_key(k, r.rp.node): float(w)
                for r in remotes
                for k, w in r.info.get("max_power_w", {}).items()
            },
        )


def _sum_or_none(values: list[float | None]) -> float | None:
    """The nodes' figures summed, or None when a node has none (its counters are read as they are)."""
    return None if None in values else sum(v for v in values if v is not None)


def _combined_source(sources: list[str]) -> Any:
    """One source for a multi-node figure: ``estimate`` if any node is estimated (the sum is then not
    a measurement), else ``unavailable`` if any is, else the measured source (``nvml`` before ``rapl``)."""
    for s in ("unavailable", "estimate", "nvml-power", "nvml", "rapl"):
        if s in sources:
            return s
    return sources[0] if sources else "unavailable"


def node_snapshots() -> dict[str, dict[str, Any]]:
    """Every node account of the connected cluster, by node name (nodes without an agent or without a
    started account are left out)."""
    import ray

    refs: list[Any] = []
    for node_id in [str(x["NodeID"]) for x in ray.nodes() if x.get("Alive")]:
        try:
            refs.append(
                ray.get_actor(AGENT_PREFIX + node_id, namespace=AGENT_NAMESPACE).account_snapshot.remote()
            )
        except ValueError:
            continue
    out: dict[str, dict[str, Any]] = {}
    for snaps in ray.get(refs, timeout=DEFAULT_RPC_TIMEOUT_S * 2):
        for i, snap in enumerate(snaps):  # a second configuration on a node is shown apart
            out[snap["node"] if i == 0 else f"{snap['node']}#{snap['account']}"] = snap
    return out


def account_key(cfg: EnergyConfig) -> str:
    """What makes two node accounts differ: the counters and how they are split. Deploy one energy
    configuration per node: two configurations on one node each count the node's energy."""
    return (
        f"{cfg.meter}|{cfg.rapl_root}|{cfg.cpu_tdp_w:g}|{cfg.cpu_cores}|{cfg.dram_w_per_gb:g}|"
        f"{sorted(cfg.idle_w.items())}|{cfg.account_period_s:g}"
    )


def gpu_read_source(sources: Mapping[str, str], fallback: str) -> str:
    """What reads a node's GPUs for a share of its account (``sources``: the account's counter key ->
    source): its GPU counters' source, whatever its CPU counter's is (on a node without readable RAPL
    a share is labelled ``estimate`` while NVML reads every GPU); ``fallback`` (the share's own
    source) where the account has no GPU counter. A planned GPU that matches none of them is
    reported apart (``unmatched_gpus``)."""
    gpu = sorted({s for k, s in sources.items() if k.startswith("gpu:")})
    if not gpu:
        return fallback
    return "nvml" if "nvml" in gpu else gpu[0]


def _failed(r: _Remote, exc: BaseException) -> None:
    r.error = f"{type(exc).__name__}: {exc}"[:300]
