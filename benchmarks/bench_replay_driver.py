"""How fast can the replay driver drive, next to what the service sustains? One run, one ratio.

1. Driver capacity: the full replay path (plan -> async httpx -> record -> fsync) in a closed loop
   against the trivial echo endpoint (``serve_app.replay.echo_server``, its own process, no work).
2. Service: the same replay against the real router serving one model (default ``tfidf-logreg``,
   trained on the demo data) on a private local Ray.
3. Ratio = driver req/s / service req/s. Well above 1: the driver is not what limits a replay.

    .venv/bin/python benchmarks/bench_replay_driver.py --requests 1000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._out import add_out_argument, write_result  # noqa: E402
from serve_app.data import DEMO_DIR  # noqa: E402
from serve_app.ports import free_port  # noqa: E402
from serve_app.replay.config import ReplayConfig, ReplayData, ReplayLoad, ReplayOutput  # noqa: E402
from serve_app.replay.records import read_records  # noqa: E402
from serve_app.replay.runner import replay_url  # noqa: E402


def _texts_file(n: int, folder: Path) -> Path:
    lines = (DEMO_DIR / "test.jsonl").read_text().splitlines()
    path = folder / "bench.jsonl"
    path.write_text("\n".join(lines[i % len(lines)] for i in range(n)) + "\n")
    return path


def _drive(url: str, model: str, texts: Path, concurrency: int, out: Path) -> dict[str, float]:
    cfg = ReplayConfig(
        models=[model],
        data=ReplayData(test_file=str(texts)),
        load=ReplayLoad(concurrency=concurrency),
        output=ReplayOutput(out=str(out), progress=False, run_name=f"bench-{model}"),
    )
    (folder,) = asyncio.run(replay_url(cfg, url))
    recs = read_records(folder / "records.jsonl")
    span = max(r.done_unix_s for r in recs) - min(r.sent_unix_s for r in recs)
    lat = sorted(r.latency_s for r in recs if r.latency_s is not None)
    return {
        "requests": len(recs),
        "errors": sum(not r.ok for r in recs),
        "seconds": span,
        "req_per_s": len(recs) / span,
        "p50_latency_ms": 1000 * lat[len(lat) // 2],
    }


def _echo(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "serve_app.replay.echo_server", "--port", str(port)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("echo server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--model", default="tfidf-logreg")
    p.add_argument("--skip-service", action="store_true")
    add_out_argument(p, "bench_replay_driver")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="aw-bench-") as tmp:
        root = Path(tmp)
        texts = _texts_file(a.requests, root)
        port = free_port()
        echo = _echo(port)
        try:
            driver = _drive(f"http://127.0.0.1:{port}", "echo", texts, a.concurrency, root / "echo")
        finally:
            echo.terminate()
            echo.wait(timeout=10)
        result: dict[str, object] = {
            "requests": a.requests,
            "concurrency": a.concurrency,
            "driver_vs_echo": driver,
        }
        if not a.skip_service:
            from serve_app.replay.local import local_serve

            app = {
                "classifiers": [{"kind": "traditional", "id": a.model}],
                "artifacts_dir": str(root / "artifacts"),
                "train_if_missing": {"dataset": "demo", "n_train": 300, "n_test": 200},
            }
            (root / "warm").mkdir()
            warm = _texts_file(100, root / "warm")
            with local_serve(app) as url:
                _drive(url, a.model, warm, a.concurrency, root / "warmup")  # first calls load the model
                service = _drive(url, a.model, texts, a.concurrency, root / "service")
            result["service"] = {"model": a.model, **service}
            result["driver_to_service_ratio"] = driver["req_per_s"] / service["req_per_s"]
    path = write_result(a, result)
    print(json.dumps(result, indent=2))
    if "driver_to_service_ratio" in result:
        print(
            f"\ndriver {driver['req_per_s']:.0f} req/s vs service {service['req_per_s']:.0f} req/s "
            f"({a.model}, concurrency {a.concurrency}): ratio {result['driver_to_service_ratio']:.1f}x"
        )

    print(f"result in {path}")


if __name__ == "__main__":
    main()
