"""accuwatt against a bare Ray Serve app, metering on vs off, and Serve vs in-process, from one run
(tfidf-logreg on the demo dataset).

Prints:
0. accuwatt's throughput (texts/s, batched, concurrent) and p50 latency against a bare Ray Serve app
   with the same two hops and model (`benchmarks/bare_serve.py`: FastAPI ingress -> model deployment,
   dynamic batching, nothing else), and the bare single-hop layout (model inside the ingress) beside
   them: the serving cost accuwatt adds, measured against the real anchor; and accuwatt's single-hop
   layout (``router.layout: single_hop``, metered) against the bare one hop and both two-hop apps.
   The added p50s also come pooled over all rounds' single-text requests with a 95 % bootstrap
   interval over pairs of requests (each app's i-th request went in the same pass over the apps, tens
   of ms apart, so the pair shares the machine's state): a lone request's latency spreads over tens
   of ms here, so that a 1 ms difference can be told from the spread between rounds; and the
   throughput ratios come per round (the apps of a round run seconds apart) with an exact interval
   over rounds for their median (95 % from 6 rounds on; fewer rounds give no 95 % interval, and no
   throughput verdict). Each target's verdict is read from its interval: met, missed, or not told
   apart at the run's spread;
1. texts/s of batched HTTP classification through the router and Serve, against the in-process
   prediction `accuwatt evaluate` does (one `predict` call over the same texts), as a ratio;
2. throughput (texts/s, batched, concurrent) and p50 latency (single-text requests, one at a time,
   alternating between the apps) with energy metering on versus off (two otherwise identical apps on
   the same Ray), as a ratio and a difference; the node's busy CPU per text in each app's rounds
   (``/proc/stat``), whose off/on ratio is the capacity metering leaves; and the CPU per text of each
   app's own replicas (router and classifier, from ``/proc/<pid>/stat``), where metering runs: the
   least noisy of the three, as the client, proxy and Ray are left out;
3. what metering adds to a single-text request inside the replica, without HTTP (the measurement of
   ``bench_replica_overhead.py``, run in the same Ray once the HTTP apps are deleted, ``--probe-rounds``);
4. the sampler thread's CPU cost per second, from the metered replica, and the node account's own CPU
   cost (its ticks' thread time over its window) as a share of one core.

Usage: .venv/bin/python benchmarks/bench_serve.py [--texts 4000] [--batch 32] [--concurrency 8] [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Ray's workers import the bare apps from benchmarks/ (not an installed package)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks._demo import cycled, trained_demo  # noqa: E402
from benchmarks._http import post_in_chunks  # noqa: E402
from benchmarks._out import add_out_argument, write_result  # noqa: E402
from benchmarks._stats import added_p50_ci, round_ratio_ci, verdict  # noqa: E402
from serve_app.energy.nodemeter import node_busy_cpu_s  # noqa: E402
from serve_app.energy.procs import scan  # noqa: E402
from tests.conftest import free_port, wait_http  # noqa: E402

MODEL = "tfidf-logreg"


async def throughput(url: str, texts: list[str], batch: int, concurrency: int) -> float:
    return len(texts) / await post_in_chunks(url, {"model": MODEL}, texts, batch, concurrency)


def timed_round(
    url: str, texts: list[str], batch: int, concurrency: int, app: str
) -> tuple[float, float, float]:
    """One throughput round: texts/s; the node's busy CPU (``/proc/stat``, every process: the client,
    Ray, every app) per text in ms; and the CPU of the app's own replicas (processes titled
    ``ServeReplica:<app>:``) per text in ms. The node figure is the machine's capacity cost: on a
    saturated machine texts/s = cores / CPU per text, and it moves less with scheduling stalls; the
    app's own figure leaves out the proxy, Ray and the client, which all apps share."""
    cpu0, procs0 = node_busy_cpu_s(), scan()
    tps = asyncio.run(throughput(url, texts, batch, concurrency))
    cpu1, procs1 = node_busy_cpu_s(), scan()
    own = f"ServeReplica:{app}:"
    app_s = sum(
        p.cpu_s - procs0[pid].cpu_s
        for pid, p in procs1.items()
        if own in p.title and pid in procs0 and procs0[pid].start_s == p.start_s
    )
    return tps, (cpu1 - cpu0) / len(texts) * 1e3, app_s / len(texts) * 1e3


def single_text_latencies_ms(urls: dict[str, str], texts: list[str]) -> dict[str, list[float]]:
    """Single-text requests, one at a time, alternating between the apps request by request (the
    order flips each time), so that both see the same machine state; every latency per app in ms. The
    i-th latencies of all apps were measured in one pass over the apps: they pair up
    (`paired_bootstrap_ci`)."""
    lat: dict[str, list[float]] = {name: [] for name in urls}
    names = list(urls)
    with httpx.Client(timeout=30) as client:
        for i, t in enumerate(texts):
            for name in names if i % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                client.post(urls[name], json={"model": MODEL, "text": t}).raise_for_status()
                lat[name].append((time.perf_counter() - t0) * 1e3)
    return lat


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Until the bare app answers a classification."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json={"model": MODEL, "text": "warm"}, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--latency-requests", type=int, default=60, help="single-text requests per app and round (paired)"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=40,
        help="alternating rounds (medians reported; 6 or more for a 95 %% interval and a throughput verdict; "
        "40, about 8 minutes here, for one that the host's spread between rounds leaves decidable)",
    )
    ap.add_argument(
        "--energy",
        default="{}",
        help="EnergyConfig overrides of the metered app (JSON), e.g. '{\"sample_period_s\": 1}'",
    )
    ap.add_argument("--probe-rounds", type=int, default=3, help="rounds of the in-replica probe")
    add_out_argument(ap, "bench_serve")
    args = ap.parse_args()
    overrides = json.loads(args.energy)

    from ray import serve

    from serve_app.app import build_app
    from serve_app.classifiers.traditional import TraditionalClassifier
    from serve_app.replay.local import local_ray

    split, artifacts = trained_demo([MODEL])
    texts = cycled(split.test.texts, args.texts)

    clf = TraditionalClassifier(artifacts / MODEL)
    clf.compute(texts[:10])
    t0 = time.perf_counter()
    clf.compute(texts)
    inproc_tps = len(texts) / (time.perf_counter() - t0)

    with local_ray(8):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        from benchmarks import bare_serve

        urls = {}
        bares = (
            ("bare2", bare_serve.two_hop),
            ("bare2f", bare_serve.two_hop_own_loop),
            ("bare1", bare_serve.one_hop),
        )
        for name, bare in bares:
            serve.run(bare(str(artifacts / MODEL)), name=name, route_prefix=f"/{name}", blocking=False)
            urls[name] = f"{base}/{name}/v1/classify"
            wait_ready(urls[name])
            asyncio.run(throughput(urls[name], texts[:500], args.batch, args.concurrency))  # warm up
        for meter, layout in (("auto", "two_hop"), ("off", "two_hop"), ("hop", "single_hop")):
            energy = {"meter": "off"} if meter == "off" else {"meter": "auto", **overrides}
            cfg = {
                "artifacts_dir": str(artifacts),
                "router": {"layout": layout},
                "classifiers": [{"kind": "traditional", "id": MODEL, "energy": energy}],
            }
            serve.run(build_app(cfg), name=f"m-{meter}", route_prefix=f"/{meter}", blocking=False)
            wait_http(f"{base}/{meter}/readyz")
            urls[meter] = f"{base}/{meter}/v1/classify"
            asyncio.run(throughput(urls[meter], texts[:500], args.batch, args.concurrency))  # warm up

        # the anchor and accuwatt side by side, then metering off beside accuwatt: the pairs the targets
        # compare run back to back (in the reverse order every other round), so a slower second of the
        # host falls on both sides of a pair more often than with another app between them
        apps = ("bare2", "auto", "off", "hop", "bare1", "bare2f")
        tps: dict[str, list[float]] = {a: [] for a in apps}
        cpu_ms: dict[str, list[float]] = {a: [] for a in apps}
        app_cpu_ms: dict[str, list[float]] = {a: [] for a in apps}
        serve_apps = {
            "bare2": "bare2",
            "bare2f": "bare2f",
            "bare1": "bare1",
            "off": "m-off",
            "auto": "m-auto",
            "hop": "m-hop",
        }
        p50: dict[str, list[float]] = {a: [] for a in apps}
        latencies: dict[str, list[float]] = {a: [] for a in apps}
        for r in range(args.rounds):
            for app in apps if r % 2 == 0 else apps[::-1]:
                t, c, own = timed_round(urls[app], texts, args.batch, args.concurrency, serve_apps[app])
                tps[app].append(t)
                cpu_ms[app].append(c)
                app_cpu_ms[app].append(own)
            for app, ms in single_text_latencies_ms(urls, texts[: args.latency_requests]).items():
                p50[app].append(statistics.median(ms))
                latencies[app].extend(ms)
        view = httpx.get(f"{base}/auto/v1/energy", timeout=30).json()
        snap = view["deployments"][MODEL]
        accounts = list(view.get("nodes", {}).values())
        replica = next(r for r in snap["replicas"].values() if not r["stale"])
        wall_s = replica["window_s"][1] - replica["window_s"][0]
        # in-replica cost of metering, without HTTP (bench_replica_overhead.py), in the same Ray and run,
        # once the HTTP apps are gone (their samplers and account ticks would time-share the 2 cores)
        from benchmarks.bench_replica_overhead import Probe

        for name in list(serve.status().applications):
            serve.delete(name)
        probe = serve.run(Probe.bind(str(artifacts), list(split.test.texts)), name="probe", route_prefix=None)
        in_replica = probe.run.remote(args.probe_rounds).result(timeout_s=1800)

    on_tps, off_tps = statistics.median(tps["auto"]), statistics.median(tps["off"])
    on_p50, off_p50 = statistics.median(p50["auto"]), statistics.median(p50["off"])
    bare_tps, one_tps = statistics.median(tps["bare2"]), statistics.median(tps["bare1"])
    bare_p50, one_p50 = statistics.median(p50["bare2"]), statistics.median(p50["bare1"])
    hop_tps, hop_p50 = statistics.median(tps["hop"]), statistics.median(p50["hop"])
    own_tps, own_p50 = statistics.median(tps["bare2f"]), statistics.median(p50["bare2f"])
    result = {
        "bare_two_hop_texts_per_s": bare_tps,
        "bare_one_hop_texts_per_s": one_tps,
        "accuwatt_vs_bare_throughput_ratio": on_tps / bare_tps,
        "accuwatt_unmetered_vs_bare_throughput_ratio": off_tps / bare_tps,
        "bare_one_hop_vs_two_hop_throughput_ratio": one_tps / bare_tps,
        "p50_ms_bare_two_hop": bare_p50,
        "p50_ms_bare_one_hop": one_p50,
        "accuwatt_added_p50_ms_vs_bare": on_p50 - bare_p50,
        "accuwatt_unmetered_added_p50_ms_vs_bare": off_p50 - bare_p50,
        "bare_own_loop_texts_per_s": own_tps,
        "p50_ms_bare_own_loop": own_p50,
        "accuwatt_vs_bare_own_loop_throughput_ratio": on_tps / own_tps,
        "accuwatt_added_p50_ms_vs_bare_own_loop": on_p50 - own_p50,
        "single_hop_texts_per_s": hop_tps,
        "single_hop_vs_bare_one_hop_throughput_ratio": hop_tps / one_tps,
        "single_hop_vs_bare_two_hop_throughput_ratio": hop_tps / bare_tps,
        "single_hop_vs_accuwatt_two_hop_throughput_ratio": hop_tps / on_tps,
        "single_hop_added_p50_ms_vs_bare_one_hop": hop_p50 - one_p50,
        "texts": len(texts),
        "batch": args.batch,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "texts_per_s_by_round": tps,  # the medians' inputs: the spread between rounds, per app
        "p50_ms_by_round": p50,
        # every single-text request of all rounds pooled, against the stock bare two hops and metering off
        "added_p50_ms_pooled_ci95": {
            "accuwatt_vs_bare": added_p50_ci(latencies["auto"], latencies["bare2"]),
            "accuwatt_unmetered_vs_bare": added_p50_ci(latencies["off"], latencies["bare2"]),
            "accuwatt_vs_bare_own_loop": added_p50_ci(latencies["auto"], latencies["bare2f"]),
            "metering_on_vs_off": added_p50_ci(latencies["auto"], latencies["off"]),
        },
        # each round's ratio (the apps of a round run seconds apart), against the same anchors:
        # [median, low, high, the interval's coverage] (95 % or more from 6 rounds on)
        "throughput_ratio_by_round_ci95": {
            "accuwatt_vs_bare": round_ratio_ci(tps["auto"], tps["bare2"]),
            "accuwatt_unmetered_vs_bare": round_ratio_ci(tps["off"], tps["bare2"]),
            "accuwatt_vs_bare_own_loop": round_ratio_ci(tps["auto"], tps["bare2f"]),
            "metering_on_vs_off": round_ratio_ci(tps["auto"], tps["off"]),
        },
        "inprocess_texts_per_s": inproc_tps,
        "serve_texts_per_s_metered": on_tps,
        "serve_vs_inprocess_ratio": on_tps / inproc_tps,
        "serve_texts_per_s_unmetered": off_tps,
        "metering_throughput_ratio": on_tps / off_tps,
        "node_cpu_ms_per_text": {a: statistics.median(v) for a, v in cpu_ms.items()},
        "node_cpu_ms_per_text_by_round": cpu_ms,
        "metering_cpu_per_text_ratio_off_over_on": statistics.median(cpu_ms["off"])
        / statistics.median(cpu_ms["auto"]),
        "app_cpu_ms_per_text": {a: statistics.median(v) for a, v in app_cpu_ms.items()},
        "app_cpu_ms_per_text_by_round": app_cpu_ms,
        "metering_app_cpu_per_text_ratio_off_over_on": statistics.median(app_cpu_ms["off"])
        / statistics.median(app_cpu_ms["auto"]),
        "p50_ms_metered": on_p50,
        "p50_ms_unmetered": off_p50,
        "metering_added_p50_ms": on_p50 - off_p50,
        "in_replica_p50_us": in_replica["p50_us"],
        "in_replica_added_p50_us": in_replica["added_p50_us"]["on"],
        "sampler_cpu_ms_per_s": replica["sampler_cpu_s"] / wall_s * 1e3 if wall_s > 0 else 0.0,
        "energy_source": replica["source"],
        "node_account_cpu_share_of_one_core": (
            sum(a["account_cpu_s"] for a in accounts)
            / sum(a["window_s"][1] - a["window_s"][0] for a in accounts)
            if accounts
            else None
        ),
    }
    path = write_result(args, result)
    print(
        f"{MODEL}, {len(texts)} texts, HTTP batches of {args.batch}, concurrency {args.concurrency}, "
        f"{args.rounds} alternating rounds (medians)"
    )
    spread = {a: f"{min(v):.0f}-{max(v):.0f}" for a, v in tps.items()}
    print(f"  texts/s per round, min-max: {spread}")
    print(f"  bare Ray Serve, two hops (the anchor):   {bare_tps:10.0f} texts/s   p50 {bare_p50:.2f} ms")
    print(
        f"  bare Ray Serve, one hop:                 {one_tps:10.0f} texts/s   ratio vs two hops "
        f"{one_tps / bare_tps:.3f}   p50 {one_p50:.2f} ms"
    )
    print(
        f"  accuwatt vs bare two hops: throughput ratio {on_tps / bare_tps:.3f} (metering off "
        f"{off_tps / bare_tps:.3f}), p50 {on_p50 - bare_p50:+.2f} ms"
    )
    for name, (d, lo, hi) in result["added_p50_ms_pooled_ci95"].items():
        print(
            f"  added p50, {name}, all rounds pooled: {d:+.2f} ms (95 % bootstrap interval {lo:+.2f} to {hi:+.2f})"
        )
    for name, (m, lo, hi, cover) in result["throughput_ratio_by_round_ci95"].items():
        print(
            f"  throughput ratio, {name}, per round: median {m:.3f} "
            f"({cover:.1%} interval over rounds {lo:.3f} to {hi:.3f})"
        )
    _, lo, hi, cover = result["throughput_ratio_by_round_ci95"]["accuwatt_vs_bare"]
    said = verdict(lo, hi, 0.95, True, cover)
    print(f"  target throughput >= 0.95x the bare app (per-round interval): {said}")
    _, lo, hi = result["added_p50_ms_pooled_ci95"]["accuwatt_vs_bare"]
    print(f"  target p50 within 1 ms of the bare app (pooled interval): {verdict(lo, hi, 1.0, False)}")
    print(
        f"  bare two hops on the replicas' own loop (accuwatt's Serve settings): {own_tps:10.0f} texts/s, "
        f"p50 {own_p50:.2f} ms; accuwatt vs it: throughput {on_tps / own_tps:.3f}, p50 {on_p50 - own_p50:+.2f} ms"
    )
    print(
        f"  accuwatt single hop (metered): {hop_tps:10.0f} texts/s   vs bare one hop {hop_tps / one_tps:.3f}, "
        f"vs bare two hops {hop_tps / bare_tps:.3f}, vs accuwatt two hops {hop_tps / on_tps:.3f}, "
        f"p50 {hop_p50:.2f} ms ({hop_p50 - one_p50:+.2f} ms vs bare one hop)"
    )
    print(f"  in-process predict (accuwatt evaluate): {inproc_tps:10.0f} texts/s")
    print(
        f"  Serve over HTTP, metering on:           {on_tps:10.0f} texts/s   ratio vs in-process {on_tps / inproc_tps:.3f}"
    )
    print(
        f"  Serve over HTTP, metering off:          {off_tps:10.0f} texts/s   ratio on/off {on_tps / off_tps:.3f}"
    )
    cpu = result["node_cpu_ms_per_text"]
    print(
        f"  node CPU per text (ms, /proc/stat): {', '.join(f'{a} {v:.3f}' for a, v in cpu.items())}; "
        f"off/on {result['metering_cpu_per_text_ratio_off_over_on']:.3f} (the capacity ratio)"
    )
    own = result["app_cpu_ms_per_text"]
    print(
        f"  the app's own replicas' CPU per text (ms): {', '.join(f'{a} {v:.3f}' for a, v in own.items())}; "
        f"off/on {result['metering_app_cpu_per_text_ratio_off_over_on']:.3f} (metering's cost where it runs)"
    )
    print(
        f"  p50 single-text latency: on {on_p50:.2f} ms, off {off_p50:.2f} ms, added {on_p50 - off_p50:+.3f} ms"
    )
    print(
        f"  in-replica added p50 (no HTTP, bench_replica_overhead): {result['in_replica_added_p50_us']:+.0f} µs"
    )
    print(
        f"  sampler CPU cost: {result['sampler_cpu_ms_per_s']:.2f} ms per second ({replica['source']} meter)"
    )
    share = result["node_account_cpu_share_of_one_core"]
    if share is not None:
        print(f"  node account CPU cost: {100 * share:.2f} % of one core (its ticks' own thread time)")

    print(f"result in {path}")


if __name__ == "__main__":
    main()
