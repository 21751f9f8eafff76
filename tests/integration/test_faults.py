"""Fault tolerance over real HTTP: SIGKILLed classifier and router replicas mid-replay, energy
totals and counters that never go down, a failing RAPL meter, and 5xx answers that carry an error id."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import traditional_config, wait_for, wait_http

MODEL = "tfidf-xgboost"
TEXTS = [
    "Du bist so ein dummer Idiot, halt die Klappe",
    "Heute scheint in Berlin die Sonne.",
    "Die Regierung hat das Gesetz beschlossen.",
    "Was für ein widerlicher Haufen Lügner.",
]


def replica_pids(app: str, deployment: str) -> set[int]:
    """PIDs of a deployment's live replica processes (Ray titles them ``ray::ServeReplica:<app>:<dep>``)."""
    tag = f"ServeReplica:{app}:{deployment}"
    out = set()
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if tag in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.add(p.pid)
    return out


def log_lines(temp_dir: str, needle: str) -> list[str]:
    hits = []
    for path in Path(temp_dir).rglob("*"):
        if path.is_file() and path.suffix in (".log", ".err", ".out"):
            try:
                hits += [ln for ln in path.read_text(errors="replace").splitlines() if needle in ln]
            except OSError:
                continue
    return hits


def deploy(serve_http: str, name: str, cfg: dict[str, Any]) -> str:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}", blocking=False)
    wait_http(f"{serve_http}/{name}/readyz")
    return f"{serve_http}/{name}"


def energy_counters(metrics_port: int, app: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``accuwatt_energy_joules`` counter series of one app from Ray's Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("accuwatt_energy_joules_total") and s.labels.get("application") == app:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


class EnergyWatch:
    """Polls ``/v1/energy`` in a thread; records every total and per-replica figure it saw."""

    def __init__(self, base_url: str, model: str) -> None:
        self.url, self.model = f"{base_url}/v1/energy", model
        self.totals: list[float] = []
        self.per_replica: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EnergyWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                r = httpx.get(self.url, timeout=10)
                dep = r.json()["deployments"][self.model]
            except Exception as exc:  # a failed poll is recorded, not fatal
                self.errors.append(repr(exc))
                continue
            self.totals.append(dep["metered_j"])
            for rep, snap in dep["replicas"].items():
                self.per_replica.setdefault(rep, []).append(snap["metered_j"])

    def assert_monotonic(self) -> None:
        assert len(self.totals) > 5, self.errors
        assert all(b >= a for a, b in zip(self.totals, self.totals[1:], strict=False)), self.totals
        for rep, seq in self.per_replica.items():
            assert all(b >= a for a, b in zip(seq, seq[1:], strict=False)), (rep, seq)


def run_replay(
    base_url: str, tmp: Path, n: int, concurrency: int, kill: Any, kill_after_records: int
) -> list[Any]:
    """Replay ``n`` requests with the replay driver, calling ``kill()`` mid-run (once
    ``kill_after_records`` records are written: a time would depend on the machine's speed, and a
    quiet CI machine once finished 400 requests before a 3 s mark); return the records."""
    from serve_app.replay.client import RetryPolicy
    from serve_app.replay.driver import LoadShape, replay_requests
    from serve_app.replay.plan import PlannedRequest
    from serve_app.replay.records import RecordStore, read_records

    reqs = [
        PlannedRequest(i, f"{tmp.name}-{i}", (f"t{i}",), (TEXTS[i % 4],) * 8, ("OTHER",) * 8)
        for i in range(n)
    ]
    path = tmp / "records.jsonl"

    async def main() -> None:
        with RecordStore(path) as store:
            async with httpx.AsyncClient(timeout=60) as client:
                task = asyncio.create_task(
                    replay_requests(
                        client,
                        base_url,
                        MODEL,
                        "s0",
                        reqs,
                        LoadShape(concurrency=concurrency),
                        store,
                        "s",
                        RetryPolicy(max_attempts=8, backoff_s=0.25, max_wait_s=5),
                    )
                )
                deadline = time.monotonic() + 120.0
                while not task.done() and time.monotonic() < deadline:
                    if path.exists() and path.read_bytes().count(b"\n") >= kill_after_records:
                        break
                    await asyncio.sleep(0.05)
                assert not task.done(), "the replay ended before the kill: make it longer"
                await asyncio.to_thread(kill)
                await task

    asyncio.run(main())
    records = read_records(path)
    assert sorted(r.request_index for r in records) == list(range(n)), "not exactly one record per request"
    return records


@pytest.fixture(scope="module")
def faults_url(serve_http: str, demo_artifacts: Any) -> Iterator[str]:
    from ray import serve

    cfg = traditional_config(demo_artifacts, [MODEL])
    cfg["classifiers"][0]["deployment"] = {"num_replicas": 2}
    yield deploy(serve_http, "faults", cfg)
    serve.delete("faults")


def test_classifier_replica_killed_mid_request(
    faults_url: str, ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    pids = wait_for(lambda: (p := replica_pids("faults", MODEL)) and len(p) == 2 and p, 60, "two replicas")
    models = httpx.get(f"{faults_url}/v1/models", timeout=30).json()["models"]
    devices = models[0]["energy_devices"]
    victim = next(
        int(d.split(":")[1]) for d in devices if d.startswith("cpu-process:")
    )  # the describe()d one
    assert victim in pids

    def energy_replicas() -> dict[str, Any]:
        body = httpx.get(f"{faults_url}/v1/energy", timeout=30).json()
        return dict(body["deployments"][MODEL]["replicas"])

    # Kill it only once it has reported (its group on the node account names its PID): a replica killed
    # before its first report reached the registry (one a second, after its first export period) has
    # left no snapshot to keep.
    victim_rep = wait_for(
        lambda: next(
            (r for r, s in energy_replicas().items() if s.get("group") == f"replica:{victim}"), None
        ),
        120,
        "the victim replica's first energy report",
    )
    counters_before: dict[Any, float] = {}
    slow_texts = ["Die Regierung hat das Gesetz beschlossen, du Idiot. " * 20] * 256  # ~0.5 s on a replica
    slow: list[httpx.Response] = []

    def slow_request() -> None:
        slow.append(
            httpx.post(f"{faults_url}/v1/classify", json={"model": MODEL, "texts": slow_texts}, timeout=120)
        )

    with EnergyWatch(faults_url, MODEL) as watch:

        def kill() -> None:
            """SIGKILL the replica while slow requests are surely executing on both replicas."""
            counters_before.update(energy_counters(ray_cluster["metrics_port"], "faults"))
            threads = [threading.Thread(target=slow_request) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.4)
            os.kill(victim, signal.SIGKILL)
            for t in threads:
                t.join(120)

        records = run_replay(faults_url, tmp_path, n=1600, concurrency=8, kill=kill, kill_after_records=100)
        new = wait_for(
            lambda: (p := replica_pids("faults", MODEL)) and len(p) == 2 and victim not in p and p,
            90,
            "Serve to replace the killed replica",
        )
        assert new - pids, "no new replica process"
        ok = httpx.post(f"{faults_url}/v1/classify", json={"model": MODEL, "texts": TEXTS}, timeout=60)
        assert ok.status_code == 200 and set(ok.json()["labels"]) <= {"OFFENSE", "OTHER"}

        seen: list[str] = []

        def stale_seen() -> bool:
            reps = energy_replicas()
            seen[:] = [f"{rep}: stale={s['stale']} metered_j={s['metered_j']:.1f}" for rep, s in reps.items()]
            return bool(reps.get(victim_rep, {}).get("stale")) and len(reps) >= 2

        # The dead replica's last snapshot is kept beside the live ones and marked stale (10 s after its
        # last report). The replacement's own first report is not waited for: on a slow CI machine its
        # constructor (model, node-account share) took over 120 s; that Serve started it is checked above.
        try:
            wait_for(stale_seen, 120, "the dead replica's snapshot kept and marked stale")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; victim {victim_rep}; last /v1/energy replicas: {seen}") from None
    failed = [(r.request_index, r.status, r.error_code) for r in records if r.status != 200]
    assert not failed, failed
    # Serve's handle (in the router) re-sends a request whose replica died mid-execution and logs this line;
    # `Router._call` retries whatever still surfaces as a dead actor.
    retried_by_router = log_lines(ray_cluster["temp_dir"], "will not be considered for future requests")
    retried_by_client = sum(r.attempts > 1 for r in records)
    print(
        f"\nkill: router retries logged={len(retried_by_router)}, client retries={retried_by_client}, "
        f"records={len(records)}, energy polls={len(watch.totals)}"
    )
    assert [r.status_code for r in slow] == [200] * 4, [r.text[:200] for r in slow]
    assert retried_by_router, "no request was in flight on the killed replica"
    watch.assert_monotonic()
    if counters_before:
        time.sleep(12)  # Ray's metrics agent exports every few seconds
        after = energy_counters(ray_cluster["metrics_port"], "faults")
        for series, value in counters_before.items():
            if series in after:
                assert after[series] >= value, (series, value, after[series])


def test_router_killed_mid_replay(faults_url: str, tmp_path: Path) -> None:
    routers = wait_for(lambda: replica_pids("faults", "router"), 30, "the router process")
    (router_pid,) = routers
    records = run_replay(
        faults_url,
        tmp_path,
        n=1200,
        concurrency=4,
        kill=lambda: os.kill(router_pid, signal.SIGKILL),
        kill_after_records=100,
    )
    wait_for(lambda: (p := replica_pids("faults", "router")) and router_pid not in p, 90, "a new router")
    failed = [(r.request_index, r.status, r.error_code) for r in records if r.status != 200]
    print(f"\nrouter kill: {len(records)} records, {len(failed)} failed: {failed}")
    # Requests inside the dead router when it died may end in the proxy's own error; no more.
    assert len(failed) <= 4, failed
    ok = httpx.post(f"{faults_url}/v1/classify", json={"model": MODEL, "texts": TEXTS}, timeout=60)
    assert ok.status_code == 200


def test_service_failure_is_5xx_with_error_id_in_body_and_log(
    serve_http: str, demo_artifacts: Any, ray_cluster: dict[str, Any]
) -> None:
    from ray import serve

    base = deploy(
        serve_http,
        "tiny-timeout",
        traditional_config(demo_artifacts, [MODEL], router={"request_timeout_s": 0.0005}),
    )
    try:
        r = httpx.post(f"{base}/v1/classify", json={"model": MODEL, "texts": TEXTS * 50}, timeout=60)
        assert r.status_code == 504, r.text
        body = r.json()
        assert body["error"]["code"] == "timeout" and len(body["error_id"]) == 12
        wait_for(lambda: log_lines(ray_cluster["temp_dir"], body["error_id"]), 15, "the error id in the log")
    finally:
        serve.delete("tiny-timeout")


# -- energy robustness: a RAPL meter whose sysfs tree breaks while the service runs ----------------------


class FakeRapl:
    """A powercap tree with one package zone whose counter a thread advances (atomic rewrites)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zone = root / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text("262143328850\n")
        self.uj = 1_000_000
        self.running = threading.Event()
        self.running.set()
        self._stop = threading.Event()
        self.write(str(self.uj))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def write(self, content: str) -> None:
        tmp = self.zone / ".energy_uj.tmp"
        tmp.write_text(content + "\n")
        os.replace(tmp, self.zone / "energy_uj")

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            if self.running.is_set():
                self.uj += 30  # 15 W
                self.write(str(self.uj))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _classify(base: str) -> httpx.Response:
    r = httpx.post(f"{base}/v1/classify", json={"model": MODEL, "texts": TEXTS * 8}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def test_meter_failing_mid_run_tags_unavailable(serve_http: str, demo_artifacts: Any, tmp_path: Path) -> None:
    from ray import serve

    rapl = FakeRapl(tmp_path / "powercap")
    cfg = traditional_config(demo_artifacts, [MODEL])
    cfg["classifiers"][0]["energy"] = {"meter": "rapl", "rapl_root": str(rapl.root), "sample_period_s": 0.02}
    base = deploy(serve_http, "rapl", cfg)
    try:
        r = _classify(base)
        e = r.json()["energy"]
        assert (e["source"], e["measured"]) == ("rapl", True) and e["joules"] is not None and e["joules"] >= 0
        assert r.headers["x-energy-source"] == "rapl" and "x-energy-joules" in r.headers

        def unavailable() -> httpx.Response | None:
            resp = _classify(base)
            return resp if resp.json()["energy"]["source"] == "unavailable" else None

        for breakage in ("remove", "garbage", "remove-zone"):
            rapl.running.clear()
            time.sleep(0.05)
            if breakage == "remove":
                os.remove(rapl.zone / "energy_uj")
            elif breakage == "garbage":
                rapl.write("not-a-number")
            else:
                shutil.move(str(rapl.zone), str(tmp_path / "moved-zone"))
            r = wait_for(unavailable, 10, f"an unavailable tag after {breakage}")
            e = r.json()["energy"]
            assert e["joules"] is None and e["measured"] is False and e["domains_j"] == {}, e
            assert r.headers["x-energy-source"] == "unavailable" and "x-energy-joules" not in r.headers
            assert set(r.json()["labels"]) <= {"OFFENSE", "OTHER"}  # classification goes on
            snap = next(
                iter(
                    httpx.get(f"{base}/v1/energy", timeout=30)
                    .json()["deployments"][MODEL]["replicas"]
                    .values()
                )
            )
            assert snap["source"] == "unavailable" and snap["error"]
            if breakage == "remove-zone":
                shutil.move(str(tmp_path / "moved-zone"), str(rapl.zone))
            rapl.write(str(rapl.uj))
            rapl.running.set()
            wait_for(lambda: _classify(base).json()["energy"]["source"] == "rapl", 10, "the meter to recover")
    finally:
        rapl.close()
        serve.delete("rapl")
