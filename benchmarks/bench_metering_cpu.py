"""Metering's CPU cost where it runs: two accuwatt apps alone on one Ray, metered and unmetered, and
the CPU time each of their replicas (router, classifier) spends per text.

``bench_serve.py`` measures the same beside four other apps (bare ones and the single hop), where the
run-to-run spread of one app's CPU per text reaches ±20 %; alone, two apps alternating give a figure
that moves by a few per cent. Prints, per replica, the median CPU per text over the rounds (ms, from
``/proc/<pid>/stat`` via ``procs.scan``) metered and unmetered and their ratio, and the throughputs.

Usage: .venv/bin/python benchmarks/bench_metering_cpu.py [--rounds 6] [--texts 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks._demo import cycled, trained_demo  # noqa: E402
from benchmarks._http import post_in_chunks  # noqa: E402
from benchmarks._out import add_out_argument, write_result  # noqa: E402
from serve_app.energy.procs import deployment_of, scan  # noqa: E402
from tests.conftest import free_port, wait_http  # noqa: E402

MODEL = "tfidf-logreg"
METERS = ("auto", "off")


def one_round(url: str, app: str, texts: list[str], batch: int, concurrency: int) -> dict[str, float]:
    """Texts/s and each replica's CPU per text (ms) of one app's round."""
    before = scan()
    took_s = asyncio.run(post_in_chunks(url, {"model": MODEL}, texts, batch, concurrency))
    after = scan()
    out = {"texts/s": len(texts) / took_s}
    for pid, p in after.items():
        if f"ServeReplica:{app}:" in p.title and pid in before and before[pid].start_s == p.start_s:
            # by deployment: while a method runs Ray appends it to the title (`deployment_of` strips it)
            out[deployment_of(p.title) or p.title] = (p.cpu_s - before[pid].cpu_s) / len(texts) * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    add_out_argument(ap, "bench_metering_cpu")
    args = ap.parse_args()

    from ray import serve

    from serve_app.app import build_app
    from serve_app.replay.local import local_ray

    split, artifacts = trained_demo([MODEL])
    texts = cycled(split.test.texts, args.texts)

    with local_ray(8):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        urls = {}
        for meter in METERS:
            cfg = {
                "artifacts_dir": str(artifacts),
                "classifiers": [{"kind": "traditional", "id": MODEL, "energy": {"meter": meter}}],
            }
            serve.run(build_app(cfg), name=f"m-{meter}", route_prefix=f"/{meter}", blocking=False)
            wait_http(f"http://127.0.0.1:{port}/{meter}/readyz")
            urls[meter] = f"http://127.0.0.1:{port}/{meter}/v1/classify"
            one_round(urls[meter], f"m-{meter}", texts[:500], args.batch, args.concurrency)  # warm up
        rounds: dict[str, list[dict[str, float]]] = {m: [] for m in METERS}
        for i in range(args.rounds):
            for meter in METERS if i % 2 == 0 else METERS[::-1]:
                rounds[meter].append(
                    one_round(urls[meter], f"m-{meter}", texts, args.batch, args.concurrency)
                )

    keys = sorted(set(rounds["auto"][0]) & set(rounds["off"][0]))
    medians = {m: {k: statistics.median(r[k] for r in rounds[m]) for k in keys} for m in METERS}
    result = {"model": MODEL, "texts": args.texts, "batch": args.batch, "concurrency": args.concurrency}
    path = write_result(args, {**result, "medians": medians, "rounds": rounds})
    print(
        f"{MODEL}, {args.texts} texts per round, batches of {args.batch}, {args.concurrency} concurrent, "
        f"{args.rounds} alternating rounds (medians)"
    )
    for key in keys:
        on, off = (medians[m][key] for m in METERS)
        unit = "texts/s" if key == "texts/s" else "ms of CPU per text"
        print(f"  {key:14s} metered {on:8.3f}  unmetered {off:8.3f}  {unit}   on/off {on / off:.3f}")
    print(f"result in {path}")


if __name__ == "__main__":
    main()
