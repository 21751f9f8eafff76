"""``accuwatt sweep FILE``: the study's topology experiments (see ``runner.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from serve_app.argtypes import yaml_message
from serve_app.errors import UsageError
from serve_app.model_ids import add_ids_argument, check_ids


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="deploy each topology of a sweep file, replay, compare",
        description="Deploy each topology of FILE in turn (a fresh local cluster per "
        "topology, or --address), replay the same dataset and splits, "
        "tear down, and write a report comparing them. A topology that fails is recorded "
        "(sweep.json, sweep.md) and the sweep goes on; it then exits with status 1.",
    )
    p.add_argument("file", type=Path, help="a sweep file, e.g. cluster/topologies/cpu-smoke.yaml")
    p.add_argument("--out", type=Path, default=Path("results/sweeps"), help="default: results/sweeps/<name>")
    p.add_argument(
        "--address",
        help="run on this Ray cluster (e.g. `auto` on the head of a `ray up` cluster) instead of "
        "starting local ones; the sweep's driver must run on the cluster's head",
    )
    add_ids_argument(p, "--only", "topology names of the file to run (space- or comma-separated)")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run folders resumed from an earlier sweep: send again the requests whose records failed "
        "(as `replay --retry-failed`)",
    )
    p.set_defaults(func=run)


def load_sweep(path: Path) -> Any:
    """The sweep file, or one line saying why it is not valid (e.g. an unknown model id)."""
    import yaml
    from pydantic import ValidationError

    from serve_app.sweep.config import SweepFile

    try:
        return SweepFile.from_yaml(path)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"{p}: " for p in [".".join(str(x) for x in first["loc"])] if p)
        raise UsageError(f"{path}: {where}{first['msg'].removeprefix('Value error, ')}") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: {yaml_message(exc)}") from None


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every topology ran; 1 when some failed (the report covers the others); 2 (one
    ``accuwatt: error:`` line) for input the user can fix, training included."""
    from serve_app.sweep.runner import SweepFailed, run_sweep

    sweep = load_sweep(args.file)
    if args.only:
        check_ids(args.only, [t.name for t in sweep.topologies], f"{args.file} has", "topology")
    out = args.out / sweep.name if args.out == Path("results/sweeps") else args.out
    try:
        print(run_sweep(args.file, out, args.address, args.only, args.retry_failed))
    except SweepFailed as exc:
        print(exc.report)
        print(f"accuwatt: sweep: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["register"]
