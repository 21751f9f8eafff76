"""``accuwatt monitoring ...`` and ``accuwatt replay --pushgateway`` on the command line, one test (or a
few) per finding of the monitoring review: the replay pushes its runs, ``up`` stops what it started
when interrupted and never mistakes another server for its own, bad input is one ``accuwatt: error:``
line (status 2). Real processes and real loopback HTTP servers stand in for Prometheus, the
Pushgateway and Grafana; nothing here starts Ray, Serve or a real Prometheus."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serve_app.cli import main
from serve_app.monitoring.stack import SD_FILE, MonitoringError, _start, find_binary
from serve_app.ports import free_port
from serve_app.replay.echo_server import EchoServer
from tests.unit.guards import forbid_ray, one_error

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_ray(monkeypatch)


# -- loopback stand-ins -----------------------------------------------------------------------------


@dataclass
class Recorder:
    """A loopback HTTP server that records every request and answers ``status`` with ``body``."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay_s: float = 0.0
    calls: list[tuple[str, str, bytes]] = field(default_factory=list)
    url: str = ""
    port: int = 0


def _serve(rec: Recorder) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            rec.calls.append((self.command, self.path, self.rfile.read(n) if n else b""))
            time.sleep(rec.delay_s)
            data = json.dumps(rec.body).encode()
            self.send_response(rec.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    rec.url = f"http://127.0.0.1:{rec.port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    server, thread = _serve(rec)
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(5)


def _closed_port() -> int:
    return free_port()  # nothing listens there


def _session(ray_temp_dir: Path) -> Path:
    """A Ray temp dir with a session that wrote no discovery file (as a Ray without its dashboard)."""
    session = ray_temp_dir / "session_2026-01-01_00-00-00_000000_1"
    session.mkdir(parents=True)
    (ray_temp_dir / "session_latest").symlink_to(session)
    (session / "metrics_export_port_abc").write_text("41234")
    return session


def _rendered(capsys: pytest.CaptureFixture[str], tmp_path: Path, *flags: str) -> dict[str, Any]:
    """``monitoring render`` with ``flags`` against a Ray session of the test's own; the config read back."""
    _session(tmp_path / "ray")
    argv = [
        "monitoring",
        "render",
        "--ray-temp-dir",
        str(tmp_path / "ray"),
        "--work-dir",
        str(tmp_path / "w"),
    ]
    assert main([*argv, *flags]) == 0
    cfg: dict[str, Any] = yaml.safe_load(capsys.readouterr().out)
    return cfg


def _fake_prometheus(folder: Path, script: str = "exec sleep 120") -> Path:
    """A ``prometheus`` executable for ``$ACCUWATT_PROMETHEUS_DIR`` that writes its PID to
    ``folder/pid`` and then runs ``script`` (by default: never answers, never exits)."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "prometheus"
    exe.write_text(f'#!/bin/sh\necho $$ > "{folder / "pid"}"\n{script}\n')
    exe.chmod(0o755)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def _kill_if_alive(pidfile: Path) -> None:
    """Cleanup of a fake Prometheus this test started (by its PID), should the code under test leak it."""
    if pidfile.exists():
        pid = int(pidfile.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _up_cmd(port: int, ray: Path, work: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serve_app.cli",
        "monitoring",
        "up",
        "--port",
        str(port),
        "--no-pushgateway",
        "--ray-temp-dir",
        str(ray),
        "--work-dir",
        str(work),
        *extra,
    ]


# -- 1: replay --pushgateway ------------------------------------------------------------------------


def _replay(out: Path, gateway: str) -> list[str]:
    return [
        "replay",
        "--dataset",
        "demo",
        "--n-train",
        "20",
        "--n-test",
        "8",
        "--splits",
        "2",
        "--models",
        "echo",
        "--out",
        str(out),
        "--no-progress",
        "--pushgateway",
        gateway,
    ]


def test_replay_pushes_each_split_and_the_mean_to_the_pushgateway(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recorder: Recorder
) -> None:
    with EchoServer() as echo:
        rc = main([*_replay(tmp_path / "out", f"127.0.0.1:{recorder.port}"), "--url", echo.url])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (folder,) = [Path(line) for line in out.out.splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text())
    expected = {m["split"]: m for m in [*metrics["splits"], metrics["mean"]]}
    assert len(expected) == 3 and "mean" in expected
    pushed: dict[str, dict[str, float]] = {}
    for method, path, body in recorder.calls:
        assert method == "PUT", (method, path)
        parts = path.removeprefix("/metrics/").split("/")
        group = dict(zip(parts[::2], parts[1::2], strict=True))
        assert {k: v for k, v in group.items() if k != "split"} == {
            "job": "accuwatt_replay",
            "model": "echo",
            "dataset": "demo",
        }, path
        samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
        pushed[group["split"]] = {s.name: s.value for s in samples}
        assert {s.labels["source"] for s in samples} == {"estimate"}
    assert pushed.keys() == expected.keys()
    for split, m in expected.items():
        assert pushed[split]["accuwatt_replay_accuracy_ratio"] == pytest.approx(m["accuracy"])
        assert pushed[split]["accuwatt_replay_energy_joules"] == pytest.approx(m["energy_wh"] * 3600)
        assert pushed[split]["accuwatt_replay_accuracy_per_wh"] == pytest.approx(m["accuracy_per_wh"])
        assert pushed[split]["accuwatt_replay_texts"] == m["n_texts"]
        assert pushed[split]["accuwatt_replay_duration_seconds"] == pytest.approx(m["duration_s"])


@pytest.mark.parametrize("gateway", ["closed", "answers 500"])
def test_a_failed_push_is_one_warning_and_the_run_succeeds(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    recorder: Recorder,
    gateway: str,
) -> None:
    recorder.status = 500
    target = f"127.0.0.1:{_closed_port() if gateway == 'closed' else recorder.port}"
    with EchoServer() as echo, caplog.at_level(logging.WARNING, logger="accuwatt"):
        rc = main([*_replay(tmp_path / "out", target), "--url", echo.url])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (folder,) = [Path(line) for line in out.out.splitlines()]
    assert (folder / "metrics.json").is_file()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert target in line and "not pushed" in line and "\n" not in line
    assert "Traceback" not in out.err
    assert len(recorder.calls) == (0 if gateway == "closed" else 1)  # stops at the first failure


@pytest.mark.parametrize(
    "value", ["http://127.0.0.1:9091", "127.0.0.1", "127.0.0.1:9091/", "host:0", ":9091"]
)
def test_replay_refuses_a_malformed_pushgateway(capsys: pytest.CaptureFixture[str], value: str) -> None:
    line = one_error(capsys, ["replay", "--url", "http://127.0.0.1:1", f"--pushgateway={value}"])
    assert "--pushgateway" in line and "HOST:PORT" in line


def test_replay_pushgateway_flag_parses() -> None:
    from serve_app.cli import build_parser

    args = build_parser().parse_args(["replay", "--url", "http://x:8000", "--pushgateway", "gw.example:9091"])
    assert args.pushgateway == "gw.example:9091"
    assert build_parser().parse_args(["replay", "--url", "http://x:8000"]).pushgateway is None


# -- 6: signals while `up` starts -------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_up_starts_stops_the_half_started_prometheus(
    tmp_path: Path, sig: signal.Signals, rc: int
) -> None:
    fake = _fake_prometheus(tmp_path / "bin")  # never ready: `up` waits for it
    _session(tmp_path / "ray")
    env = {**os.environ, "ACCUWATT_PROMETHEUS_DIR": str(fake), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        _up_cmd(free_port(), tmp_path / "ray", tmp_path / "work"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pidfile = fake / "pid"
    try:
        deadline = time.monotonic() + 90
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the fake prometheus was never started"
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        time.sleep(0.5)  # inside the readiness wait
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == rc, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in stderr, stderr
        assert not _alive(pid), "the half-started prometheus still runs"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_if_alive(pidfile)


# -- 7: another server on the port ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_up_refuses_a_port_another_server_answers_on(tmp_path: Path, recorder: Recorder) -> None:
    fake = _fake_prometheus(tmp_path / "bin")
    _session(tmp_path / "ray")
    env = {**os.environ, "ACCUWATT_PROMETHEUS_DIR": str(fake), "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(
            _up_cmd(recorder.port, tmp_path / "ray", tmp_path / "work"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        _kill_if_alive(fake / "pid")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("accuwatt: error: "), done.stderr
    assert f"127.0.0.1:{recorder.port} is in use" in lines[0] and "--port" in lines[0]
    assert not (fake / "pid").exists(), "prometheus was started on a taken port"
    assert not recorder.calls, "the foreign server's /-/ready was taken for ours"


def test_a_ready_answer_does_not_count_once_the_started_child_exited(
    tmp_path: Path, recorder: Recorder
) -> None:
    """The child runs at the first look and has exited (as a Prometheus that could not bind does) when
    another server's slow ready answer comes."""
    recorder.delay_s = 0.8  # within the 1 s ready timeout
    child = ["/bin/sh", "-c", "sleep 0.3; echo 'bind: address already in use'; exit 3"]
    with pytest.raises(MonitoringError, match="answered /-/ready but the prometheus .* exited with 3: bind"):
        _start("prometheus", child, recorder.url, tmp_path / "p.log", timeout_s=10)
    assert [c[:2] for c in recorder.calls] == [("GET", "/-/ready")]


# -- 8: one-line errors -----------------------------------------------------------------------------


def test_up_without_a_ray_session_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = one_error(
        capsys,
        ["monitoring", "up", "--no-pushgateway", "--port", str(free_port()), "--ray-temp-dir", str(tmp_path)],
    )
    assert "no Ray session" in line


def test_up_with_an_unusable_work_dir_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCUWATT_PROMETHEUS_DIR", str(_fake_prometheus(tmp_path / "bin")))
    _session(tmp_path / "ray")
    work = tmp_path / "a-file"
    work.write_text("")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    line = one_error(
        capsys,
        [
            "monitoring",
            "up",
            "--no-pushgateway",
            "--port",
            str(free_port()),
            "--ray-temp-dir",
            str(tmp_path / "ray"),
            "--work-dir",
            str(work),
        ],
    )
    assert f"--work-dir {work}" in line
    assert not (tmp_path / "bin" / "pid").exists()
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # `up` gives the handlers back


@pytest.mark.parametrize("value", ["admin", ":s3cret"])
def test_basic_auth_without_user_and_colon_is_one_line(
    capsys: pytest.CaptureFixture[str], recorder: Recorder, value: str
) -> None:
    line = one_error(
        capsys, ["monitoring", "push-dashboards", "--grafana-url", recorder.url, f"--basic-auth={value}"]
    )
    assert "--basic-auth" in line and "USER:PASSWORD" in line and "s3cret" not in line
    assert not recorder.calls


def test_basic_auth_reaches_grafana(capsys: pytest.CaptureFixture[str], recorder: Recorder) -> None:
    recorder.body = {"status": "success", "uid": "accuwatt-energy", "url": "/d/x/y", "version": 1}
    assert (
        main(["monitoring", "push-dashboards", "--grafana-url", recorder.url, "--basic-auth", "admin:a:b"])
        == 0
    )
    assert recorder.calls and all(path == "/api/dashboards/db" for _, path, _ in recorder.calls)


@pytest.mark.parametrize("out", ["a-file", "a-file/sub"])
def test_build_into_an_unusable_folder_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, out: str
) -> None:
    (tmp_path / "a-file").write_text("")
    line = one_error(capsys, ["monitoring", "build", "--out", str(tmp_path / out)])
    assert f"--out {tmp_path / out}" in line


def test_a_dashboard_without_uid_is_refused_before_any_push(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recorder: Recorder
) -> None:
    recorder.body = {"status": "success", "uid": "gen123", "url": "/d/gen123/x", "version": 1}
    (tmp_path / "a.json").write_text(json.dumps({"title": "mine", "panels": []}))
    line = one_error(
        capsys,
        [
            "monitoring",
            "push-dashboards",
            "--grafana-url",
            recorder.url,
            "--token",
            "t",
            "--dashboards",
            str(tmp_path),
        ],
    )
    assert "a.json" in line and "no uid" in line
    assert not recorder.calls


# -- 9: render --pushgateway ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["http://x:9091/", "x:9091/metrics", "x", "x:", ":9091", "x:99999", "x:9091 ", "[::1:9091"]
)
def test_render_refuses_a_pushgateway_that_is_not_host_port(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    line = one_error(
        capsys, ["monitoring", "render", "--ray-temp-dir", str(tmp_path), f"--pushgateway={value}"]
    )
    assert "--pushgateway" in line and "HOST:PORT" in line


@pytest.mark.skipif(find_binary("promtool") is None, reason="promtool not installed (scripts/setup.sh test)")
@pytest.mark.parametrize("value", ["gw.example:9091", "10.0.0.5:9091", "[::1]:9091", "push_gw:80"])
def test_render_accepts_host_port_and_prometheus_takes_the_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    cfg = _rendered(capsys, tmp_path, "--pushgateway", value)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "accuwatt_replay"]
    assert job["static_configs"] == [{"targets": [value]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    promtool = find_binary("promtool")
    assert promtool
    r = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "w" / SD_FILE).is_file()


# -- 10: --scrape-interval against the rules' rate window --------------------------------------------


@pytest.mark.parametrize("command", ["render", "up"])
@pytest.mark.parametrize("value", ["16s", "1m", "2m", "15s1ms", "1h"])
def test_scrape_intervals_longer_than_a_quarter_of_the_rate_window_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, value: str
) -> None:
    line = one_error(
        capsys, ["monitoring", command, "--ray-temp-dir", str(tmp_path), f"--scrape-interval={value}"]
    )
    assert "--scrape-interval" in line and "at most 15s" in line and "1m" in line


@pytest.mark.parametrize("value", ["15s", "14s", "500ms", "1s"])
def test_scrape_intervals_up_to_15s_are_rendered(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    cfg = _rendered(capsys, tmp_path, "--scrape-interval", value)
    assert cfg["global"] == {"scrape_interval": value, "evaluation_interval": value}
