"""``accuwatt cluster up|down|status``: a local multi-node Ray cluster on this machine.

``up`` starts a head and ``--workers`` worker raylets (loopback only), prints the address and the state
file, and stays in the foreground until Ctrl-C / SIGTERM (the nodes are its children and stop with it).
``down`` sends SIGTERM to that launcher (found through the state file); ``status`` prints the state and,
if the cluster answers, its nodes. Drivers connect with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` exported
(loopback, see ``local_cluster``) and, for ``--auth token``, ``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

POINTER = Path("/tmp/accuwatt-cluster.json")
"""Where ``up`` records the state file of the cluster it started (per machine, last one wins)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cluster", help="a local multi-node Ray cluster (head + N workers, loopback)")
    sub = p.add_subparsers(dest="cluster_command", required=True)
    up = sub.add_parser("up", help="start and stay in the foreground until Ctrl-C")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--cpus-per-node", type=float, default=4)
    up.add_argument("--gpus-per-node", type=float, default=0)
    up.add_argument(
        "--auth",
        choices=["disabled", "token"],
        default="disabled",
        help="Ray token auth (default disabled: loopback only; see cluster/README.md)",
    )
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="stop the cluster started by `up`")
    down.set_defaults(func=_down)
    st = sub.add_parser("status", help="print the cluster's state and nodes")
    st.set_defaults(func=_status)


def _up(args: argparse.Namespace) -> int:
    from serve_app.topology.local_cluster import LocalCluster, default_nodes, prometheus_targets

    cluster = LocalCluster(
        default_nodes(args.workers, args.cpus_per_node, args.gpus_per_node), auth=args.auth
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster.start()
    try:
        info = cluster.info()
        POINTER.write_text(
            json.dumps({"state": str(Path(info.temp_dir) / "cluster.json"), "pid": os.getpid()})
        )
        print(info.to_json())
        print(f"address: {info.address}  metrics: {', '.join(prometheus_targets(info))}")
        print("export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=" + args.auth, flush=True)
        stop.wait()
    finally:
        cluster.shutdown()
        POINTER.unlink(missing_ok=True)
    return 0


def _pointer() -> dict[str, Any] | None:
    try:
        return dict(json.loads(POINTER.read_text()))
    except (OSError, ValueError):
        return None


def _down(args: argparse.Namespace) -> int:
    ptr = _pointer()
    if ptr is None:
        print("no cluster started by `accuwatt cluster up` is recorded")
        return 1
    try:
        os.kill(int(ptr["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        POINTER.unlink(missing_ok=True)
        print("the launcher had already exited")
        return 1
    print(f"stopping launcher {ptr['pid']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    ptr = _pointer()
    if ptr is None:
        print("no cluster recorded")
        return 1
    state = json.loads(Path(ptr["state"]).read_text())
    print(json.dumps(state, indent=2))
    return 0
