"""Where a replica's work runs, and which meters must cover it.

A replica's classifier may run its work in processes the replica does not own: vLLM workers (Ray
actors in the replica's placement group with the Ray executor, on several nodes with pipeline
parallelism), or a pipeline's feature stage. The classifier reports them as :class:`WorkerProcess`
values (PID, Ray node, GPUs); :func:`plan_meter` turns them into what ``probe.make_meter`` builds:

- GPUs on the replica's node join the replica's own (NVML meters GPUs, whoever uses them);
- processes on the replica's node that are not its descendants join the CPU estimate (descendants
  are already counted through ``include_children``);
- every other node becomes a :class:`~serve_app.energy.agents.RemoteProcesses` for that node's agent.

``gpu_nodes`` tells which nodes hold the replica's GPUs, so that the deployment can flag a tag whose
GPUs are not all metered (``gpus_not_metered``) instead of passing CPU energy off as the whole.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from serve_app.config_common import EnergyConfig
from serve_app.energy.agents import MultiNodeMeter, agent_for, gpu_read_source
from serve_app.energy.base import Meter, MeterError
from serve_app.energy.keys import RemoteProcesses, WorkerProcess
from serve_app.energy.probe import make_meter
from serve_app.energy.share import AccountShareMeter
from serve_app.energy.window import Settle


def node_name(node_id: str, names: Mapping[str, str]) -> str:
    """A Ray node id's accuwatt name (its first 12 characters when ``names`` lacks it)."""
    return names.get(node_id) or node_id[:12]


@dataclass(frozen=True)
class MeterPlan:
    """What the replica's meter covers: local GPUs and extra local PIDs, and the other nodes."""

    local_gpu_ids: list[str]
    local_pids: list[int]
    remotes: list[RemoteProcesses]
    gpu_nodes: frozenset[str] = field(default_factory=frozenset)


def plan_meter(
    workers: Iterable[WorkerProcess],
    replica_gpu_ids: Iterable[str],
    local_node_id: str | None,
    local_node: str,
    node_names: Mapping[str, str],
    descendants: Iterable[int] = (),
) -> MeterPlan:
    """Split a replica's worker processes by node (see the module doc).

    ``node_names``: Ray node id -> accuwatt node name (``topology.nodes.alive_nodes()``); an id not in
    it is named by its first 12 characters. ``descendants``: PIDs the local estimate already covers
    (the replica's process tree).
    """
    covered = set(descendants)
    local_gpus = list(dict.fromkeys(str(g) for g in replica_gpu_ids))
    local_pids: list[int] = []
    gpu_nodes = {local_node} if local_gpus else set()
    remote: dict[str, tuple[list[int], list[str]]] = {}
    for w in workers:
        if w.node_id is None or w.node_id == local_node_id:
            local_gpus.extend(g for g in w.gpu_ids if g not in local_gpus)
            if w.pid not in covered and w.pid not in local_pids:
                local_pids.append(w.pid)
            if w.gpu_ids:
                gpu_nodes.add(local_node)
            continue
        pids, gpus = remote.setdefault(w.node_id, ([], []))
        if w.pid not in pids:
            pids.append(w.pid)
        gpus.extend(g for g in w.gpu_ids if g not in gpus)
        if w.gpu_ids:
            gpu_nodes.add(node_name(w.node_id, node_names))
    remotes = [
        RemoteProcesses(node_id, node_name(node_id, node_names), tuple(pids), tuple(gpus))
        for node_id, (pids, gpus) in remote.items()
    ]
    return MeterPlan(local_gpus, local_pids, remotes, frozenset(gpu_nodes))


def meter_for_plan(cfg: EnergyConfig, plan: MeterPlan, node: str, node_id: str | None = None) -> Meter:
    """The replica's meter for ``plan``, wrapped in a ``MultiNodeMeter`` when the plan has other nodes.

    With ``energy.node_account`` (the default) every part is a share of a node account, so that each
    node's counters are read once and its closure holds: here, the replica's group (its tree plus the
    plan's local processes and GPUs, `account_meter`); on every other node, the group
    ``replica:<pid>@<node>-<id>`` that the node's agent forms from the plan's processes and GPUs there
    (``agents.NodeEnergyAgentImpl.watch``). Otherwise meters of the replica's own
    (``probe.make_meter``, and the agents' meters of the remote processes)."""
    if cfg.node_account and cfg.meter != "off":
        local: Meter = account_meter(cfg, node, node_id, plan.local_pids, plan.local_gpu_ids)
    else:
        local = make_meter(cfg, plan.local_gpu_ids, node, plan.local_pids)
    if not plan.remotes or cfg.meter == "off":
        return local
    group = f"{os.getpid()}@{node}-{id(local):x}"
    return MultiNodeMeter(local, node, plan.remotes, cfg, group)


def settle_of(meter: Meter) -> Settle | None:
    """How the ends of a request's window wait for ``meter``'s counters: only a ``MultiNodeMeter``
    caches some (other nodes', polled); every other meter reads its counters when asked."""
    return meter.settled if isinstance(meter, MultiNodeMeter) else None


def sources_by_node(meter: Meter) -> dict[str, str]:
    """Each node's source for a replica's meter (one node unless it is a ``MultiNodeMeter``), as
    `unmetered_gpu_nodes` judges it: for a share of a node account, the source of the account's GPU
    counters (``agents.gpu_read_source``: a share labelled ``estimate`` on a node without readable
    RAPL still has its GPUs read by NVML), else the meter's own."""
    if isinstance(meter, MultiNodeMeter):
        return meter.sources_by_node
    if isinstance(meter, AccountShareMeter):
        return {meter.info.node: gpu_read_source(meter.sources, meter.info.source)}
    return {meter.info.node: meter.info.source}


def unmetered_gpu_nodes(
    gpu_nodes: Iterable[str], sources: Mapping[str, str], unmatched: Iterable[str] = ()
) -> list[str]:
    """Nodes holding the replica's GPUs whose meter does not read GPUs (``sources``: node -> source),
    and the nodes ``unmatched`` where a planned GPU matches no counter (``unmatched_gpu_nodes``)."""
    gpu_nodes = set(gpu_nodes)
    unread = {n for n in gpu_nodes if sources.get(n) not in ("nvml", "nvml-power")}
    return sorted(unread | (set(unmatched) & gpu_nodes))


def unmatched_gpu_nodes(meter: Meter) -> list[str]:
    """Nodes where a GPU of the replica's plan matches no counter of the node's account (a UUID the
    node's NVML does not list, no NVML there): the GPU's energy is in no share, so a tag that reads
    the others is not the whole."""
    if isinstance(meter, MultiNodeMeter):
        return sorted(meter.unmatched_gpus)
    return [meter.info.node] if getattr(meter, "unmatched_gpus", ()) else []


def descendant_pids(pid: int | None = None) -> set[int]:
    """The process tree under ``pid`` (default: this process), itself included."""
    root = psutil.Process(pid or os.getpid())
    out = {root.pid}
    with contextlib.suppress(psutil.Error):  # a child exiting while we walk
        out.update(p.pid for p in root.children(recursive=True))
    return out


def account_meter(
    energy: EnergyConfig,
    node: str,
    node_id: str | None,
    local_pids: Sequence[int] = (),
    gpu_ids: Sequence[str] = (),
) -> AccountShareMeter:
    """This process's share of the node energy account (``energy/share.py``), starting the node's
    account if it is not running. ``local_pids`` / ``gpu_ids``: processes and GPUs of this node that
    do this process's work outside its process tree (they join its group). Raises `MeterError` when
    the account gives no share in time."""
    import ray

    if node_id is None:
        raise MeterError("the node account needs Ray (no node id)")
    unmatched: list[str] = []

    def start() -> tuple[Any, str]:
        """The node's agent (got or started), this account in it, this group's processes and GPUs
        claimed: at first, and again should the agent die (`AccountShareMeter`'s ``restart``)."""
        nonlocal unmatched
        agent = agent_for(node_id, node)
        key = str(ray.get(agent.start_account.remote(energy.model_dump()), timeout=60)["key"])
        if local_pids or gpu_ids:  # the agent maps GPU UUIDs to the NVML indices its counters are named by
            unmatched = ray.get(agent.claim.remote(key, list(local_pids), pid, list(gpu_ids)), timeout=60)
        return agent, key

    pid = os.getpid()
    agent, key = start()
    meter = AccountShareMeter(
        agent,
        node,
        energy.account_period_s,
        account=key,
        claimed_pids=local_pids,
        unmatched_gpus=unmatched or (),
        own_group=True,
        restart=start,
    )
    deadline = time.monotonic() + 10 * energy.account_period_s + 30
    while meter.error is not None and time.monotonic() < deadline:
        time.sleep(energy.account_period_s / 2)
        meter._poll()
    if meter.error is not None:
        meter.close()
        raise MeterError(f"node account gave no share: {meter.error}")
    return meter
