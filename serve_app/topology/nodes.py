"""Node names: how accuwatt names the Ray nodes a replica's energy comes from.

A node started by the local launcher (``serve_app.topology.local_cluster``) carries the label
``accuwatt-node`` (``head``, ``worker-1``, ...) and a custom resource ``node:<name>`` to pin work to it.
Elsewhere the name is the host name, or the short Ray node id where several nodes share a host
(one machine running several raylets, as in CI). Names never contain ``:`` (they go into counter keys).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any

NODE_LABEL = "accuwatt-node"
"""Ray node label holding the node's accuwatt name."""
NODE_RESOURCE_PREFIX = "node:"
"""Custom resource ``node:<name>`` (amount 1) that pins deployments to a named node."""


def clean_name(name: str) -> str:
    """A node name safe inside counter keys and Prometheus labels."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "node"


def name_from(labels: Mapping[str, Any] | None, node_id: str, hostname: str | None = None) -> str:
    """The accuwatt name of a node: its label, else ``hostname`` if given, else the short node id."""
    label = (labels or {}).get(NODE_LABEL)
    if isinstance(label, list):  # get_node_labels() may give lists
        label = label[0] if label else None
    if label:
        return clean_name(str(label))
    if hostname:
        return clean_name(hostname)
    return clean_name(node_id[:12])


def current_node_name() -> str:
    """This process's node: its name in :func:`alive_nodes` when inside Ray, else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return node_name(str(ray.get_runtime_context().get_node_id()), alive_nodes())
    except Exception:  # outside Ray, or an old runtime context
        pass
    return clean_name(socket.gethostname())


def node_name(node_id: str, names: Mapping[str, str]) -> str:
    """A Ray node's accuwatt name from ``names`` (:func:`alive_nodes`), else its short id."""
    return names.get(node_id) or name_from(None, node_id)


def current_node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None
    except Exception:
        return None


def alive_nodes() -> dict[str, str]:
    """Ray node id -> accuwatt name for every alive node of the connected cluster: the node's label,
    else its host name when no other alive node shares it, else the short node id."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    hosts = [str(n.get("NodeManagerHostname") or "") for n in alive]
    out: dict[str, str] = {}
    for n, host in zip(alive, hosts, strict=True):
        unique = host if host and hosts.count(host) == 1 else None
        out[str(n["NodeID"])] = name_from(n.get("Labels"), str(n["NodeID"]), unique)
    return out
