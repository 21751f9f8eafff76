"""``accuwatt cluster up|down|status``: a local multi-node Ray cluster on this machine.

``up`` starts a head and ``--workers`` worker raylets (loopback only), prints the cluster (address,
nodes, metrics ports), the state record and the exports a driver needs (``RAY_ADDRESS``, loopback,
auth), and stays in the foreground until Ctrl-C / SIGTERM (the nodes are its children and stop with
it; a start that fails or is interrupted stops the nodes it started). ``down`` sends SIGTERM to that
launcher; ``status`` prints what ``up`` recorded (address, auth, session folder, every node with its
CPUs, GPUs and metrics port) while the launcher runs: from the record, without asking the cluster.
Drivers connect with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` exported (loopback, see ``local_cluster``)
and, for ``--auth token``, ``RAY_AUTH_MODE=token``.

What ``up`` started is recorded in ``cluster.json`` in a per-user private folder (see
:func:`state_dir`), never in a shared place such as ``/tmp`` (the cluster's session folder there is
not read back): the cluster's description, and the launcher's PID with its start time and command
line. ``down`` signals the PID only while the process still has both, so a recycled PID or a stale
record never gets another process killed.
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

from serve_app.argtypes import non_negative_int, positive_int
from serve_app.errors import UsageError

STATE_DIR_ENV = "ACCUWATT_STATE_DIR"
RECORD_FILE = "cluster.json"


def state_dir_path() -> Path:
    """``$ACCUWATT_STATE_DIR``, else ``$XDG_RUNTIME_DIR/accuwatt``, else ``~/.cache/accuwatt/run``."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "accuwatt"
    return Path.home() / ".cache" / "accuwatt" / "run"


def _refuse(d: Path, why: str) -> UsageError:
    return UsageError(
        f"cluster state folder {d}: {why}; accuwatt keeps the cluster record only in a private folder "
        f"(mode 0700, yours): fix it or set ${STATE_DIR_ENV} to another folder"
    )


def check_private(d: Path) -> None:
    """Refuse (`UsageError`) a state folder that is not a private folder of this user: not a folder
    (a file, a symlink), another user's, or open to group or others. It is never changed here."""
    try:
        st = d.lstat()
    except OSError as exc:
        raise _refuse(d, exc.strerror or type(exc).__name__) from None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(d, "is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(d, "is not a folder")
    if st.st_uid != os.getuid():
        raise _refuse(d, f"belongs to another user (uid {st.st_uid})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise _refuse(d, f"has mode {mode:04o}, open to group or others (`chmod 700 {d}`)")


def state_dir(create: bool = True) -> Path | None:
    """The private per-user folder of the cluster record (`state_dir_path`). Made with mode 0700 when
    missing and ``create`` (``up``); else ``None`` when missing (``status`` and ``down`` only read).
    An existing folder is used only if private (`check_private`): never chmod-ed or taken over."""
    d = state_dir_path()
    if create:
        try:
            d.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _refuse(d, f"cannot be made ({exc.strerror or type(exc).__name__})") from None
        else:
            d.chmod(0o700)  # made here: mkdir's mode is cut by the umask
    elif not d.exists() and not d.is_symlink():
        return None
    check_private(d)
    return d


def record_path(create: bool = True) -> Path | None:
    d = state_dir(create)
    return None if d is None else d / RECORD_FILE


def process_identity(pid: int) -> dict[str, Any]:
    """What identifies a process beyond its (reusable) PID: its start time and command line."""
    p = psutil.Process(pid)
    return {"pid": pid, "create_time": p.create_time(), "cmdline": p.cmdline()}


def write_record(cluster: dict[str, Any], pid: int) -> Path:
    """Record the cluster's description (what ``status`` prints) and its launcher, in an owner-only
    file of the private state folder."""
    path = record_path()
    assert path is not None  # made when missing
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"cluster": cluster, **process_identity(pid)}, f)
    tmp.replace(path)
    return path


def read_record() -> dict[str, Any] | None:
    """The record ``up`` wrote; ``None`` when there is none. A record (or state folder) that cannot be
    read or is not a record is a `UsageError` naming it, never taken for "no cluster"."""
    path = record_path(create=False)
    if path is None:
        return None
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"{path}: cannot be read ({why})") from None
    try:
        rec = json.loads(text)
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        raise UsageError(f"{path}: not a cluster record written by `accuwatt cluster up`; remove it")
    return rec


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
    # whole numbers: a raylet refuses fractional CPUs or GPUs ("Resource quantities must all be whole numbers")
    up.add_argument("--cpus-per-node", type=positive_int, default=4, help="logical CPUs per node")
    up.add_argument("--gpus-per-node", type=non_negative_int, default=0, help="GPUs per node")
    up.add_argument(
        "--auth",
        choices=["disabled", "token"],
        default="disabled",
        help="Ray token auth (default disabled: loopback only; see cluster/README.md)",
    )
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="stop the cluster started by `up`")
    down.set_defaults(func=_down)
    st = sub.add_parser("status", help="print the recorded cluster: address, auth and nodes")
    st.set_defaults(func=_status)


def export_line(address: str, auth: str) -> str:
    """The exports a driver on this machine needs to join the cluster (`up` prints it)."""
    return f"export RAY_ADDRESS={address} RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE={auth}"


def _forget(record: Path) -> None:
    """Remove the record if it is still this launcher's."""
    try:
        rec = read_record()
    except UsageError:
        return
    if rec is not None and rec.get("pid") == os.getpid():
        record.unlink(missing_ok=True)


def running_launcher() -> psutil.Process | None:
    """The launcher of a cluster ``up`` recorded, while it still runs (``None`` when none is recorded, the
    record is stale, or it is no record at all: ``up`` writes over those)."""
    try:
        rec = read_record()
    except UsageError:
        return None
    return None if rec is None else recorded_launcher(rec)


def _refuse_second(proc: psutil.Process) -> UsageError:
    return UsageError(
        f"a cluster started by `accuwatt cluster up` (launcher PID {proc.pid}) is still running and "
        f"recorded in {record_path(create=False)}: `accuwatt cluster down` it first, or set "
        f"${STATE_DIR_ENV} to another private folder for a second cluster"
    )


def _up(args: argparse.Namespace) -> int:
    from serve_app.topology.local_cluster import LocalCluster, default_nodes, prometheus_targets

    record_path()  # the private folder is usable before anything starts
    other = running_launcher()
    if other is not None:  # its record would be overwritten: `down` and `status` would lose it
        raise _refuse_second(other)
    nodes = default_nodes(args.workers, args.cpus_per_node, args.gpus_per_node)
    stop = threading.Event()
    cluster = None
    record = None
    try:
        try:
            cluster = LocalCluster(nodes, auth=args.auth)
        except ValueError as exc:  # e.g. more GPUs than CUDA_VISIBLE_DEVICES lists
            raise UsageError(str(exc)) from None
        cluster.start()  # a start that fails or is interrupted stops the nodes it started
        for sig in (signal.SIGINT, signal.SIGTERM):  # after start: Ray's head installs its own (exit 1)
            signal.signal(sig, lambda *_: stop.set())
        info = cluster.info()
        other = running_launcher()
        if other is not None and other.pid != os.getpid():  # another `up` recorded itself meanwhile
            raise _refuse_second(other)
        record = write_record(json.loads(info.to_json()), os.getpid())
        print(info.to_json())
        print(f"address: {info.address}  metrics: {', '.join(prometheus_targets(info))}")
        print(f"recorded in {record}")
        print(export_line(info.address, args.auth), flush=True)
        stop.wait()
    except KeyboardInterrupt:
        print("accuwatt cluster up: interrupted; the nodes started are stopped", file=sys.stderr)
        return 130
    finally:
        if cluster is not None:
            cluster.shutdown()
        if record is not None:
            _forget(record)
    return 0


def _checked_record() -> tuple[dict[str, Any], psutil.Process] | None:
    """The record and its launcher, if it still runs; a stale record is removed (and said so)."""
    rec = read_record()
    if rec is None:
        print("no cluster started by `accuwatt cluster up` is recorded", file=sys.stderr)
        return None
    proc = recorded_launcher(rec)
    if proc is None:
        path = record_path(create=False)
        if path is not None:
            path.unlink(missing_ok=True)
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
    """Print the recorded cluster (address, auth, session folder, nodes) as JSON on stdout, and its
    nodes and exports on stderr."""
    checked = _checked_record()
    if checked is None:
        return 1
    rec, proc = checked
    cluster = rec.get("cluster")
    if not isinstance(cluster, dict) or not cluster.get("address"):
        print(
            f"launcher PID {proc.pid} runs, but its record has no cluster description (an older "
            "accuwatt wrote it): `accuwatt cluster down`, then `up` again",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(cluster, indent=2))  # stdout: the record alone, for scripts; the rest for people
    for n in cluster.get("nodes") or []:
        print(
            f"node {n.get('name')}: {n.get('num_cpus')} CPUs, {n.get('num_gpus')} GPUs, "
            f"metrics 127.0.0.1:{n.get('metrics_port')}",
            file=sys.stderr,
        )
    print(export_line(str(cluster["address"]), str(cluster.get("auth", "disabled"))), file=sys.stderr)
    return 0
