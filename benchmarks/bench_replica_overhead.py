"""What metering adds to one request inside a replica, without HTTP noise.

Inside one Serve replica (so that the replica context exists), three ``ClassifierHost`` objects on
the same tfidf-logreg artifact: metering ``off`` (the baseline), ``auto`` (the estimate meter here,
50 ms sampler) and ``auto`` with a 10 s sampler (isolates the per-request path from the sampler
thread). Single-text ``classify`` calls, round-robin with the order flipped every request, batch wait
0; median per object. Also the cost of the pieces: a meter read, read+begin+read+end on the ledger,
building a tag. Units: µs.

``bench_serve.py`` measures the same end to end over HTTP, where a p50 of ~20 ms and the spread
between two identical apps (its A/A run) hide effects this small.

Usage: .venv/bin/python benchmarks/bench_replica_overhead.py [--rounds 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray import serve  # noqa: E402

from benchmarks._out import add_out_argument, write_result  # noqa: E402

MODEL = "tfidf-logreg"
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"meter": "off"},
    "on": {"meter": "auto"},
    "on-10s-sampler": {"meter": "auto", "sample_period_s": 10},
}


async def measure(artifacts: str, texts: list[str], rounds: int) -> dict[str, Any]:
    """Runs inside the replica."""
    from serve_app.deployment import ClassifierHost
    from serve_app.energy.tag import make_tag

    objs: dict[str, Any] = {}
    for name, energy in VARIANTS.items():
        o = ClassifierHost()
        spec = {
            "kind": "traditional",
            "id": MODEL,
            "energy": energy,
            "deployment": {"batch_wait_timeout_s": 0},
        }
        await o.start(spec, artifacts)
        objs[name] = o
    names = list(objs)
    lat: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i, t in enumerate(texts):
            for name in names if i % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                await objs[name].classify([t], None, f"r{r}-{i}-{name}")
                lat[name].append(time.perf_counter() - t0)
    p50 = {n: statistics.median(v) * 1e6 for n, v in lat.items()}

    energy = objs["on"].server.energy
    info = energy.info

    def per_call_us(fn: Any, n: int = 2000) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        return (time.perf_counter() - t0) / n * 1e6

    def read_begin_read_end(i: int) -> Any:
        ledger = energy.sampler.ledger
        ledger.begin(f"z{i}", energy.sampler.read(), 1.0)
        return ledger.end(f"z{i}", energy.sampler.read())

    alloc = read_begin_read_end(-1)
    return {
        "meter": info.source,
        "p50_us": p50,
        "added_p50_us": {n: p50[n] - p50["off"] for n in names if n != "off"},
        "meter_read_us": per_call_us(lambda i: energy.sampler.read()),
        "read_begin_read_end_us": per_call_us(read_begin_read_end),
        "window_open_close_us": per_call_us(lambda i: energy.open(f"w{i}", 1.0).close()),
        "make_tag_us": per_call_us(lambda i: make_tag(alloc, info, "time", "r").model_dump()),
    }


@serve.deployment
class Probe:
    """A replica that runs `measure` (the replica context must exist for the servers it builds)."""

    def __init__(self, artifacts: str, texts: list[str]) -> None:
        self.artifacts, self.texts = artifacts, texts

    async def run(self, rounds: int) -> dict[str, Any]:
        return await measure(self.artifacts, self.texts, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    add_out_argument(ap, "bench_replica_overhead")
    args = ap.parse_args()

    from benchmarks._demo import trained_demo
    from serve_app.replay.local import local_ray

    split, artifacts = trained_demo([MODEL])
    texts = list(split.test.texts)

    with local_ray(4):
        handle = serve.run(Probe.bind(str(artifacts), texts), name="replica-overhead", route_prefix=None)
        out = handle.run.remote(args.rounds).result(timeout_s=1800)
    path = write_result(args, out)
    print(f"{MODEL}, single-text classify inside one replica, {len(texts)} texts x {args.rounds} rounds")
    for name, us in out["p50_us"].items():
        added = out["added_p50_us"].get(name)
        extra = f"   added {added:+.0f} µs" if added is not None else "   (baseline)"
        print(f"  {name:16} p50 {us:8.0f} µs{extra}")
    print(
        f"  pieces ({out['meter']}): meter read {out['meter_read_us']:.1f} µs, read+begin+read+end "
        f"{out['read_begin_read_end_us']:.1f} µs, tag {out['make_tag_us']:.1f} µs, window open+close "
        f"{out['window_open_close_us']:.1f} µs"
    )

    print(f"result in {path}")


if __name__ == "__main__":
    main()
