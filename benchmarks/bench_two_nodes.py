"""What metering costs a replica whose work spans two Ray nodes, from one run: metering on vs off.

On the local two-node cluster (what ``accuwatt cluster up --workers 1`` starts), one app serves the
same two-stage pipeline twice (tfidf features on ``worker-1``, the classifier head in the replica on
``head``): once metered (the default energy config) and once with ``energy.meter: off``. A metered
replica reads worker-1's energy through worker-1's agent, and both ends of every request wait for an
answer of that agent asked for then (``agents.MultiNodeMeter.settled``): one actor round trip each.

Prints, per rounds alternating between the two (the order flips each round):
- p50 latency of single-text requests, one at a time, and the added p50 of metering with its 95 %
  bootstrap interval over all requests pooled (resampled in pairs: each metered request with the
  unmetered one sent right beside it);
- throughput (texts/s) of requests of ``--batch`` texts from ``--concurrency`` clients, as a ratio;
- of the metered answers: how many tags carry a part from worker-1, and how many say
  ``remote_counters_late``.

Usage: .venv/bin/python benchmarks/bench_two_nodes.py [--rounds 3] [--latency-requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks._demo import cycled, trained_demo  # noqa: E402
from benchmarks._http import post_in_chunks  # noqa: E402
from benchmarks._out import add_out_argument, write_result  # noqa: E402
from benchmarks.bench_serve import added_p50_ci  # noqa: E402

MODELS = {"on": "tfidf-2nodes-metered", "off": "tfidf-2nodes-unmetered"}


def pipeline(model_id: str, meter: str) -> dict[str, Any]:
    return {
        "kind": "pipeline",
        "id": model_id,
        "model": "tfidf-logreg",
        "deployment": {"num_cpus": 0.5, "resources": {"node:head": 0.01}},
        "feature_resources": {"node:worker-1": 0.01},
        "energy": {"meter": meter},
    }


def latencies_ms(
    url: str, texts: list[str], flip: bool
) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """Single-text requests, alternating between the two models request by request; every latency
    per model (ms) and the metered answers' tags."""
    lat: dict[str, list[float]] = {k: [] for k in MODELS}
    tags: list[dict[str, Any]] = []
    order = list(MODELS)[::-1] if flip else list(MODELS)
    with httpx.Client(timeout=60, trust_env=False) as client:
        for i, text in enumerate(texts):
            for key in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                r = client.post(url, json={"model": MODELS[key], "text": text})
                lat[key].append((time.perf_counter() - t0) * 1e3)
                r.raise_for_status()
                if key == "on":
                    tags.append(r.json()["energy"])
    return lat, tags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=200)
    ap.add_argument("--texts", type=int, default=1000, help="texts per throughput round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    add_out_argument(ap, "bench_two_nodes")
    args = ap.parse_args()

    from ray import serve

    from serve_app.app import build_app
    from serve_app.topology.local_cluster import (
        LocalCluster,
        connect,
        default_nodes,
        start_serve,
        use_loopback,
    )
    from tests.conftest import wait_http

    use_loopback()
    split, artifacts = trained_demo(["tfidf-logreg"])
    texts = cycled(split.test.texts, max(args.texts, args.latency_requests))

    lat: dict[str, list[float]] = {k: [] for k in MODELS}
    p50: dict[str, list[float]] = {k: [] for k in MODELS}
    tps: dict[str, list[float]] = {k: [] for k in MODELS}
    tags: list[dict[str, Any]] = []
    with_remote_by_round: list[int] = []
    with LocalCluster(default_nodes(1)) as cluster:
        connect(cluster.address, logging_level="WARNING", namespace="accuwatt-bench-two-nodes")
        base = start_serve()
        cfg = {
            "artifacts_dir": str(artifacts),
            "router": {
                "resources": {"node:head": 0.01}
            },  # the overhead on head: worker-1's part is the model's
            "classifiers": [pipeline(MODELS["on"], "auto"), pipeline(MODELS["off"], "off")],
        }
        serve.run(build_app(cfg), name="accuwatt", route_prefix="/", blocking=False)
        wait_http(f"{base}/readyz", timeout_s=600)
        url = f"{base}/v1/classify"
        for key in MODELS:  # warm up
            asyncio.run(
                post_in_chunks(url, {"model": MODELS[key]}, texts[:200], args.batch, args.concurrency)
            )
        for r in range(args.rounds):
            for key in list(MODELS) if r % 2 == 0 else list(MODELS)[::-1]:
                body = {"model": MODELS[key]}
                wall = asyncio.run(
                    post_in_chunks(url, body, texts[: args.texts], args.batch, args.concurrency)
                )
                tps[key].append(args.texts / wall)
            round_lat, round_tags = latencies_ms(url, texts[: args.latency_requests], flip=r % 2 == 1)
            tags.extend(round_tags)
            with_remote_by_round.append(sum(t["nodes_j"].get("worker-1", 0.0) > 0 for t in round_tags))
            for key, ms in round_lat.items():
                lat[key].extend(ms)
                p50[key].append(statistics.median(ms))
        serve.shutdown()

    with_remote = sum(t["nodes_j"].get("worker-1", 0.0) > 0 for t in tags)
    late = sum("remote_counters_late" in t["flags"] for t in tags)
    result = {
        "p50_ms": {k: statistics.median(v) for k, v in p50.items()},
        "p50_ms_by_round": p50,
        "metering_added_p50_ms_pooled_ci95": added_p50_ci(lat["on"], lat["off"]),
        "texts_per_s": {k: statistics.median(v) for k, v in tps.items()},
        "texts_per_s_by_round": tps,
        "metering_throughput_ratio": statistics.median(tps["on"]) / statistics.median(tps["off"]),
        "metered_tags": len(tags),
        "tags_with_worker_1": with_remote,
        "tags_with_worker_1_by_round": with_remote_by_round,
        "tags_remote_counters_late": late,
        "rounds": args.rounds,
        "batch": args.batch,
        "concurrency": args.concurrency,
    }
    path = write_result(args, result)
    d, lo, hi = result["metering_added_p50_ms_pooled_ci95"]
    print(f"two-node pipeline (features on worker-1, head on head), {args.rounds} alternating rounds")
    print(
        f"  p50 single text: metered {result['p50_ms']['on']:.2f} ms, unmetered {result['p50_ms']['off']:.2f} ms"
    )
    print(f"  added p50 of metering, all requests pooled: {d:+.2f} ms (95 % interval {lo:+.2f} to {hi:+.2f})")
    print(
        f"  throughput (batches of {args.batch}, {args.concurrency} clients): metered "
        f"{result['texts_per_s']['on']:.0f}, unmetered {result['texts_per_s']['off']:.0f} texts/s, "
        f"ratio {result['metering_throughput_ratio']:.3f}"
    )
    print(
        f"  metered tags with a part from worker-1: {with_remote} of {len(tags)} "
        f"(per round {with_remote_by_round}); remote_counters_late: {late}"
    )

    print(f"result in {path}")


if __name__ == "__main__":
    main()
