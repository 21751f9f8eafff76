"""``accuwatt sweep FILE``: the study's topology experiments (see ``runner.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="deploy each topology of a sweep file, replay, compare",
        description="Deploy each topology of FILE in turn (a fresh local cluster per "
        "topology, or --address), replay the same dataset and splits, "
        "tear down, and write a report comparing them.",
    )
    p.add_argument("file", type=Path, help="a sweep file, e.g. cluster/topologies/cpu-smoke.yaml")
    p.add_argument("--out", type=Path, default=Path("results/sweeps"), help="default: results/sweeps/<name>")
    p.add_argument("--address", help="run on this Ray cluster instead of starting local ones")
    p.add_argument("--only", default="", help="comma-separated topology names")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serve_app.sweep.config import SweepFile
    from serve_app.sweep.runner import run_sweep

    name = SweepFile.from_yaml(args.file).name
    out = args.out / name if args.out == Path("results/sweeps") else args.out
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    print(run_sweep(args.file, out, args.address, only or None))
    return 0


__all__ = ["register"]
