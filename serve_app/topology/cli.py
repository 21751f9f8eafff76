"""``accuwatt cluster up|down|status``: a local multi-node Ray cluster on this machine.

``up`` starts a head and ``--workers`` worker raylets (loopback only), prints the address and the state
file, and stays in the foreground until Ctrl-C / SIGTERM (the nodes are its children and stop with it).
``down`` sends SIGTERM to that launcher; ``status`` prints the state and, if the cluster answers, its
nodes. Drivers connect with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` exported (loopback, see
``local_cluster``) and, for ``--auth token``, ``RAY_AUTH_MODE=token``.

What ``up`` started is recorded in ``cluster.json`` in a per-user private folder (mode 0700, see
:func:`state_dir`), never in a shared place such as ``/tmp``: the launcher's PID with its start time
and command line. ``down`` signals the PID only while the process still has both, so a recycled PID or
a stale record never gets another process killed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from serve_app.argtypes import non_negative_float, non_negative_int, positive_float

STATE_DIR_ENV = "ACCUWATT_STATE_DIR"
RECORD_FILE = "cluster.json"


def state_dir() -> Path:
    """``$ACCUWATT_STATE_DIR``, else ``$XDG_RUNTIME_DIR/accuwatt``, else ``~/.cache/accuwatt/run``;
    created with mode 0700. A folder owned by another user is refused; looser modes are tightened."""
    if os.environ.get(STATE_DIR_ENV):
        d = Path(os.environ[STATE_DIR_ENV])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "accuwatt"
    else:
        d = Path.home() / ".cache" / "accuwatt" / "run"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{d} is not a folder of this user: refusing to keep cluster state there")
    if stat.S_IMODE(st.st_mode) != 0o700:
        d.chmod(0o700)
    return d


def record_path() -> Path:
    return state_dir() / RECORD_FILE


def process_identity(pid: int) -> dict[str, Any]:
    """What identifies a process beyond its (reusable) PID: its start time and command line."""
    p = psutil.Process(pid)
    return {"pid": pid, "create_time": p.create_time(), "cmdline": p.cmdline()}


def write_record(state_file: str, pid: int) -> Path:
    """Record the launcher (owner-only file in the private state folder)."""
    path = record_path()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"state": state_file, **process_identity(pid)}, f)
    tmp.replace(path)
    return path


def read_record() -> dict[str, Any] | None:
    try:
        return dict(json.loads(record_path().read_text()))
    except (OSError, ValueError):
        return None


def recorded_launcher(rec: dict[str, Any]) -> psutil.Process | None:
    """The recorded process, if its PID still belongs to it (same start time and command line)."""
    try:
        proc = psutil.Process(int(rec["pid"]))
        same_start = abs(proc.create_time() - float(rec.get("create_time", -1))) < 0.01
        return proc if same_start and proc.cmdline() == rec.get("cmdline") else None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cluster", help="a local multi-node Ray cluster (head + N workers, loopback)")
    sub = p.add_subparsers(dest="cluster_command", required=True)
    up = sub.add_parser("up", help="start and stay in the foreground until Ctrl-C")
    up.add_argument("--workers", type=non_negative_int, default=1, help="worker nodes beside the head")
    up.add_argument("--cpus-per-node", type=positive_float, default=4, help="logical CPUs per node")
    up.add_argument("--gpus-per-node", type=non_negative_float, default=0, help="GPUs per node")
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

    record_path()  # the private folder is usable before anything starts
    cluster = LocalCluster(
        default_nodes(args.workers, args.cpus_per_node, args.gpus_per_node), auth=args.auth
    )
    stop = threading.Event()
    cluster.start()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after start: Ray's head installs its own (exit 1)
        signal.signal(sig, lambda *_: stop.set())
    record = None
    try:
        info = cluster.info()
        record = write_record(str(Path(info.temp_dir) / "cluster.json"), os.getpid())
        print(info.to_json())
        print(f"address: {info.address}  metrics: {', '.join(prometheus_targets(info))}")
        print(f"recorded in {record}")
        print("export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=" + args.auth, flush=True)
        stop.wait()
    finally:
        cluster.shutdown()
        rec = read_record()
        if record is not None and rec is not None and rec.get("pid") == os.getpid():
            record.unlink(missing_ok=True)
    return 0


def _checked_record() -> tuple[dict[str, Any], psutil.Process] | None:
    """The record and its launcher, if it still runs; a stale record is removed (and said so)."""
    rec = read_record()
    if rec is None:
        print("no cluster started by `accuwatt cluster up` is recorded", file=sys.stderr)
        return None
    proc = recorded_launcher(rec)
    if proc is None:
        record_path().unlink(missing_ok=True)
        print(
            f"the recorded launcher (PID {rec.get('pid')}) is gone or PID {rec.get('pid')} is now another "
            "process: nothing signalled, stale record removed",
            file=sys.stderr,
        )
        return None
    return rec, proc


def _down(args: argparse.Namespace) -> int:
    checked = _checked_record()
    if checked is None:
        return 1
    try:
        checked[1].terminate()  # psutil checks the start time again right before signalling
    except psutil.NoSuchProcess:
        print("the launcher has just exited", file=sys.stderr)
        return 1
    print(f"stopping launcher {checked[1].pid}")
    return 0


def _status(args: argparse.Namespace) -> int:
    checked = _checked_record()
    if checked is None:
        return 1
    print(Path(checked[0]["state"]).read_text())
    return 0
