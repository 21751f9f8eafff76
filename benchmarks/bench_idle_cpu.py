"""What the deployed service costs while it serves nothing: CPU time per process group, idle.

One private Ray with Serve; the app (one LLM on vLLM for CPU with ``--llm``, else tfidf-logreg trained on
the demo set) is deployed with metering on (``auto``), left idle for ``--seconds`` after it is ready, and
every process on the node is read from ``/proc`` at both ends; then the same with metering ``off``.
Processes are grouped by the node account's own rule (``energy/procs.group_of``: classifier replicas
with their children, router, Serve proxy, Ray system, other). Units: % of one core.

This is the fixed cost the offline engine does not pay: on a 2-core machine, what Ray and Serve take
while idle is taken from the engine's OpenMP threads under load too (``bench_llm_modes.py --serve``).

Serve's idle loops run at accuwatt's periods (``serve_app/env.py`` ``RAY_NODE_ENV``); ``--stock-serve``
measures Serve's own (0.1 s).

Usage: .venv/bin/python benchmarks/bench_idle_cpu.py [--llm prepared:smollm2] [--seconds 30] [--out PATH]
       [--stock-serve]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._cpu import CpuByGroup  # noqa: E402
from benchmarks._out import add_out_argument, write_result  # noqa: E402
from benchmarks.bench_llm_modes import cpu_llm_spec  # noqa: E402
from serve_app.env import RAY_NODE_ENV  # noqa: E402
from tests.conftest import free_port, wait_http  # noqa: E402

STOCK_SERVE_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "100"}
"""Ray Serve's defaults for what ``serve_app/env.py`` ``RAY_NODE_ENV`` sets."""
SETTLE_S = 10.0  # after /readyz: the replicas' first exports and the account's first ticks are done


def idle_cpu(seconds: float) -> dict[str, Any]:
    """CPU time per group kind and the busiest processes over ``seconds`` of idle (% of one core)."""
    clock = CpuByGroup().start()
    time.sleep(seconds)
    return clock.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None, help="an LLM model (e.g. prepared:smollm2); default tfidf-logreg")
    ap.add_argument("--seconds", type=float, default=30.0)
    add_out_argument(ap, "bench_idle_cpu")
    ap.add_argument(
        "--stock-serve",
        action="store_true",
        help="Serve's own loop periods (0.1 s), not accuwatt's RAY_NODE_ENV (serve_app/env.py)",
    )
    args = ap.parse_args()
    if args.stock_serve:  # Serve's own periods (local_ray sets accuwatt's only where none is set)
        os.environ.update(STOCK_SERVE_ENV)

    from ray import serve

    from serve_app.app import build_app
    from serve_app.data import load_dataset, make_split
    from serve_app.replay.local import local_ray
    from serve_app.train import train_split

    artifacts = Path(tempfile.mkdtemp(prefix="aw-idle-"))
    base_spec: dict[str, Any]
    if args.llm:
        base_spec = cpu_llm_spec("idle-llm", args.llm, ["positive", "negative"])
    else:
        ds = load_dataset("demo")
        train_split(make_split(ds, 300, 50, 20250101, 0), ["tfidf-logreg"], artifacts, ds.labels, ds.source)
        base_spec = {"kind": "traditional", "id": "tfidf-logreg"}

    ray_env = {k: os.environ.get(k, RAY_NODE_ENV[k]) for k in RAY_NODE_ENV}
    out: dict[str, Any] = {"model": args.llm or "tfidf-logreg", "ray_env": ray_env}
    with local_ray(8):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for meter in ("auto", "off"):
            spec = {**base_spec, "energy": {"meter": meter}}
            serve.run(
                build_app({"classifiers": [spec], "artifacts_dir": str(artifacts)}),
                name="idle",
                route_prefix="/",
                blocking=False,
            )
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=900)
            time.sleep(SETTLE_S)
            out[meter] = idle_cpu(args.seconds)
            serve.delete("idle")
    path = write_result(args, out)
    print(f"{out['model']}: CPU while idle, % of one core, {args.seconds:g} s after the app was ready")
    print("  " + ", ".join(f"{k}={v}" for k, v in ray_env.items()))
    for meter in ("auto", "off"):
        r = out[meter]
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["by_kind_pct"].items())
        print(f"  metering {meter:4}: total {r['total_pct']:.1f}   ({kinds})")
        for row in r["top"][:8]:
            print(f"      {row['pct']:5.2f}  {row['title']}")

    print(f"result in {path}")


if __name__ == "__main__":
    main()
