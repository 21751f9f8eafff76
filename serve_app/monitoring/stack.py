"""A local Prometheus (and Pushgateway) against a local Ray cluster: config rendering and processes.

The committed ``monitoring/prometheus.yml`` is the template: it scrapes Ray's metrics agents through
Ray's file service discovery (``<ray temp dir>/prom_metrics_service_discovery.json``, written by the
Ray dashboard; the per-session file is ``<session dir>/prom_metrics_service_discovery.json``) and the
Pushgateway. ``render_config`` points it at the right files; when the cluster runs without the
dashboard (``include_dashboard=False``, as in the tests) no discovery file exists and we write one
ourselves from the session's ``metrics_export_port_*`` files (local node only, loopback).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

SD_FILE = "prom_metrics_service_discovery.json"
DEFAULT_RAY_TEMP_DIR = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray"))
MONITORING_DIR = Path(__file__).resolve().parents[2] / "monitoring"
"""The repository's ``monitoring/`` folder (an editable install or a checkout)."""
BIN_DIR = Path(__file__).resolve().parents[2] / ".cache" / "bin"
"""Where ``scripts/setup.sh test`` links Debian's Prometheus binaries, unpacked inside the checkout."""


class MonitoringError(RuntimeError):
    """The stack cannot start: a binary, a Ray session or a port is missing."""


def find_session_dir(ray_temp_dir: Path = DEFAULT_RAY_TEMP_DIR) -> Path:
    """The running (latest) Ray session under a Ray temp dir (``session_latest``, resolved)."""
    latest = ray_temp_dir / "session_latest"
    if not latest.exists():
        raise MonitoringError(
            f"no Ray session under {ray_temp_dir} (start Ray first, or pass --ray-temp-dir)"
        )
    return latest.resolve()


def discovery_file(ray_temp_dir: Path, work_dir: Path) -> Path:
    """Ray's service-discovery file for the latest session, or one written into ``work_dir`` from the
    session's ``metrics_export_port_*`` files when Ray wrote none (no dashboard). The path is absolute:
    Prometheus resolves a relative ``file_sd_configs`` path against its config file's folder."""
    ray_temp_dir, work_dir = ray_temp_dir.absolute(), work_dir.absolute()
    session = find_session_dir(ray_temp_dir)
    for candidate in (session / SD_FILE, ray_temp_dir / SD_FILE):
        if candidate.exists() and candidate.resolve().parent == session:
            return candidate
    ports = sorted(
        {
            int(p.read_text().strip())
            for p in session.glob("metrics_export_port_*")
            if p.read_text().strip().isdigit()
        }
    )
    if not ports:
        raise MonitoringError(f"Ray session {session} has neither {SD_FILE} nor metrics_export_port_* files")
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / SD_FILE
    out.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{p}" for p in ports]}]))
    return out


def render_config(
    sd_file: Path,
    pushgateway: str | None,
    scrape_interval: str = "15s",
    evaluation_interval: str | None = None,
    template: Path | None = None,
) -> dict[str, Any]:
    """The committed ``prometheus.yml`` pointed at ``sd_file`` and the Pushgateway (``host:port``; None
    drops that job), rule files made absolute, intervals set (Prometheus durations: ``1s``, ``15s``)."""
    template = template or MONITORING_DIR / "prometheus.yml"
    cfg = yaml.safe_load(template.read_text())
    cfg["global"]["scrape_interval"] = scrape_interval
    cfg["global"]["evaluation_interval"] = evaluation_interval or scrape_interval
    cfg["rule_files"] = [str((template.parent / f).resolve()) for f in cfg.get("rule_files", [])]
    jobs = []
    for job in cfg["scrape_configs"]:
        if job["job_name"] == "ray":
            job["file_sd_configs"] = [{"files": [str(sd_file.absolute())], "refresh_interval": "5s"}]
        elif job["job_name"] == "accuwatt_replay":
            if pushgateway is None:
                continue
            job["static_configs"] = [{"targets": [pushgateway]}]
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    return cfg


@dataclass
class Service:
    """A child process we started, with the URL it answers on. ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)


def find_binary(name: str) -> str | None:
    """``prometheus``, ``prometheus-pushgateway`` or ``promtool``: in ``$ACCUWATT_PROMETHEUS_DIR`` when
    set (only there), else in ``BIN_DIR``, else on ``PATH``; ``None`` when there is none."""
    override = os.environ.get("ACCUWATT_PROMETHEUS_DIR")
    path = Path(override or BIN_DIR) / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    return None if override else shutil.which(name)


def _binary(name: str) -> str:
    path = find_binary(name)
    if not path:
        where = os.environ.get("ACCUWATT_PROMETHEUS_DIR") or f"{BIN_DIR} or PATH"
        raise MonitoringError(f"`{name}` not found in {where}: run scripts/setup.sh test")
    return path


def check_port_free(port: int, flag: str) -> None:
    """Refuse (`MonitoringError`) a loopback port another process listens on: its answer to
    ``/-/ready`` would pass for the service we start (which then fails to bind and exits).
    ``SO_REUSEADDR`` as Prometheus sets it: a port with connections in TIME_WAIT is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise MonitoringError(
                f"127.0.0.1:{port} is in use ({exc.strerror or exc}): another process listens there; "
                f"stop it or choose another {flag}"
            ) from None


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (at most 300 characters), or ``""``."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def _start(name: str, argv: list[str], url: str, log_path: Path, timeout_s: float) -> Service:
    """Start ``argv`` in a session of its own and wait until ``url`` answers ``/-/ready`` while it
    still runs. Whatever ends the wait (an error, Ctrl-C, a SIGTERM handler's exception) stops it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(name, url, proc, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise MonitoringError(
                    f"{name} exited with {proc.returncode}: {_last_line(log_path)} (log: {log_path})"
                )
            try:
                ready = httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                if proc.poll() is not None:  # the answer came from another server on that port
                    raise MonitoringError(
                        f"{url} answered /-/ready but the {name} started for it exited with "
                        f"{proc.returncode}: {_last_line(log_path)} (log: {log_path})"
                    )
                return service
            time.sleep(0.2)
        raise MonitoringError(f"{name} not ready at {url} within {timeout_s} s; log: {log_path}")
    except BaseException:
        service.stop()
        raise


def start_pushgateway(port: int, work_dir: Path, timeout_s: float = 30.0) -> Service:
    """Debian's ``prometheus-pushgateway`` on ``127.0.0.1:port`` (no persistence: a restart forgets runs)."""
    argv = [_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    check_port_free(port, "--pushgateway-port")
    return _start("pushgateway", argv, f"http://127.0.0.1:{port}", work_dir / "pushgateway.log", timeout_s)


def start_prometheus(
    config: dict[str, Any], port: int, work_dir: Path, retention: str = "7d", timeout_s: float = 60.0
) -> Service:
    """Debian's ``prometheus`` on ``127.0.0.1:port`` with ``config`` written to ``work_dir/prometheus.yml``
    and its TSDB under ``work_dir/data``."""
    check_port_free(port, "--port")
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = work_dir / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        _binary("prometheus"),
        f"--config.file={cfg_path}",
        f"--storage.tsdb.path={work_dir / 'data'}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    return _start("prometheus", argv, f"http://127.0.0.1:{port}", work_dir / "prometheus.log", timeout_s)


def start_stack(
    ray_temp_dir: Path,
    work_dir: Path,
    port: int = 9090,
    pushgateway_port: int | None = 9091,
    scrape_interval: str = "15s",
) -> list[Service]:
    """Pushgateway (unless ``pushgateway_port`` is None) and Prometheus; returns them, Prometheus last."""
    # Both ports before anything starts: Prometheus' port checked only after the Pushgateway started
    # would name our own Pushgateway "another process" when the two ports are the same.
    if pushgateway_port is not None and pushgateway_port == port:
        raise MonitoringError(
            f"--port and --pushgateway-port are both {port}: give the Pushgateway another port "
            "(or --no-pushgateway)"
        )
    check_port_free(port, "--port")
    services: list[Service] = []
    try:
        gateway = None
        if pushgateway_port is not None:
            services.append(start_pushgateway(pushgateway_port, work_dir))
            gateway = f"127.0.0.1:{pushgateway_port}"
        sd = discovery_file(ray_temp_dir, work_dir)
        services.append(start_prometheus(render_config(sd, gateway, scrape_interval), port, work_dir))
    except BaseException:
        for s in reversed(services):
            s.stop()
        raise
    return services
