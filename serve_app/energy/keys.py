"""Counter keys across nodes, and the processes that do a replica's work (plain values, no Ray).

Counter keys start with their domain: ``"cpu:package-0"``; across nodes the node is the second part:
``"<domain>:<node>:<device>"`` (``cpu:head:process``, ``gpu:worker-1:0``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from serve_app.energy.nvml import GpuIdentity, resolve_gpus


# -- counter keys ------------------------------------------------------------------------------
def node_key(key: str, node: str) -> str:
    """``"cpu:process"`` on node ``worker-1`` -> ``"cpu:worker-1:process"``."""
    domain, _, device = key.partition(":")
    return f"{domain}:{node}:{device}"


def gpu_keys(gpu_ids: Iterable[str], physical: Sequence[GpuIdentity]) -> tuple[list[str], list[str]]:
    """The account's counter keys (``gpu:<NVML index>``) of GPUs given by NVML index or UUID
    (``GPU-...``, or a unique prefix: vLLM's workers report UUIDs), mapped through ``physical`` (the
    node's GPUs as its NVML counters name them, ``nvml.resolve_gpus``); and the ids that match none of
    them (no NVML on the node, a MIG instance, an unknown id): their energy is in no share."""
    keys: list[str] = []
    unmatched: list[str] = []
    for g in gpu_ids:
        try:
            keys.extend(f"gpu:{gpu.index}" for gpu in resolve_gpus([str(g)], physical))
        except ValueError:
            unmatched.append(str(g))
    return list(dict.fromkeys(keys)), unmatched


def node_of_key(key: str) -> str | None:
    """The node a counter key names (``None`` for single-node keys such as ``"cpu:process"``)."""
    parts = key.split(":", 2)
    return parts[1] if len(parts) == 3 else None


def joules_by_node(energy_j: dict[str, float], default_node: str = "") -> dict[str, float]:
    """Sum per-key joules by node (keys without a node go to ``default_node``). Units: J."""
    out: dict[str, float] = {}
    for k, v in energy_j.items():
        n = node_of_key(k) or default_node
        out[n] = out.get(n, 0.0) + v
    return out


@dataclass(frozen=True)
class RemoteProcesses:
    """Processes (and GPUs) a replica uses on another node. ``node_id``: the Ray node id. Built by
    ``energy.footprint.plan_meter`` from what the replica's classifier reports."""

    node_id: str
    node: str
    pids: tuple[int, ...] = ()
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerProcess:
    """A process doing a replica's work. ``node_id``: its Ray node (None: the replica's node);
    ``gpu_ids``: the GPUs it computes on, as NVML UUIDs (``GPU-...``) or physical indices."""

    pid: int
    node_id: str | None = None
    gpu_ids: tuple[str, ...] = ()
    role: str = ""
