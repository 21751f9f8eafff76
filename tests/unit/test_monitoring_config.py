"""The committed monitoring files: generated files are current, Prometheus accepts config and rules
(``promtool``), alerts fire on synthetic series, the launcher renders the config for a Ray session,
and dashboards reach a Grafana through its HTTP API (a loopback stand-in that records the calls)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.monitoring.build import stale
from serve_app.monitoring.dashboards import DATASOURCE_UID, build_dashboards
from serve_app.monitoring.push import load_dashboards, push_dashboards
from serve_app.monitoring.stack import (
    MONITORING_DIR,
    SD_FILE,
    MonitoringError,
    discovery_file,
    find_binary,
    render_config,
)

promtool = find_binary("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (scripts/setup.sh test)")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_generated_files_are_current() -> None:
    assert stale(MONITORING_DIR) == [], "run `accuwatt monitoring build` and commit"


@needs_promtool
def test_promtool_accepts_committed_config() -> None:
    r = run_promtool("check", "config", str(MONITORING_DIR / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_accepts_rules() -> None:
    r = run_promtool(
        "check", "rules", *(str(MONITORING_DIR / "rules" / f) for f in ("recording.yml", "alerts.yml"))
    )
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_alerts_fire_on_synthetic_series() -> None:
    r = run_promtool("test", "rules", str(MONITORING_DIR / "rules" / "tests.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def _session(tmp: Path, sd: bool) -> Path:
    session = tmp / "session_2026-01-01_00-00-00_000000_1"
    session.mkdir(parents=True)
    (tmp / "session_latest").symlink_to(session)
    (session / "metrics_export_port_abc").write_text("41234")
    if sd:
        (session / SD_FILE).write_text(
            json.dumps([{"labels": {"job": "ray"}, "targets": ["10.0.0.1:41234"]}])
        )
    return session


def test_discovery_file_prefers_rays_own(tmp_path: Path) -> None:
    session = _session(tmp_path / "ray", sd=True)
    assert discovery_file(tmp_path / "ray", tmp_path / "work") == session / SD_FILE


def test_discovery_file_written_without_dashboard(tmp_path: Path) -> None:
    _session(tmp_path / "ray", sd=False)
    sd = discovery_file(tmp_path / "ray", tmp_path / "work")
    assert sd.parent == tmp_path / "work"
    assert json.loads(sd.read_text()) == [{"labels": {"job": "ray"}, "targets": ["127.0.0.1:41234"]}]


def test_discovery_file_needs_a_session(tmp_path: Path) -> None:
    with pytest.raises(MonitoringError, match="no Ray session"):
        discovery_file(tmp_path, tmp_path / "work")


@needs_promtool
def test_rendered_config_is_valid(tmp_path: Path) -> None:
    sd = tmp_path / SD_FILE
    cfg = render_config(sd, "127.0.0.1:19091", scrape_interval="1s")
    assert cfg["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [str(sd)]
    assert jobs["accuwatt_replay"]["static_configs"] == [{"targets": ["127.0.0.1:19091"]}]
    assert all(Path(f).is_absolute() and Path(f).exists() for f in cfg["rule_files"])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_promtool("check", "config", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    no_gw = render_config(sd, None)
    assert [j["job_name"] for j in no_gw["scrape_configs"]] == ["ray"]


def test_dashboards_name_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(
        (MONITORING_DIR / "grafana/provisioning/datasources/accuwatt.yml").read_text()
    )
    assert provisioned["datasources"][0]["uid"] == DATASOURCE_UID
    for model in build_dashboards().values():
        uids = {t["datasource"]["uid"] for p in model["panels"] if p["type"] != "row" for t in p["targets"]}
        assert uids == {DATASOURCE_UID}
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids))
        for p in model["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24


class _FakeGrafana(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict[str, Any], str | None]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, body, self.headers.get("Authorization")))
        uid = body["dashboard"]["uid"]
        answer = json.dumps({"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_grafana() -> Iterator[str]:
    _FakeGrafana.calls = []
    server = HTTPServer(("127.0.0.1", 0), _FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_dashboards_through_grafana_api(fake_grafana: str) -> None:
    dashboards = load_dashboards(MONITORING_DIR / "grafana" / "dashboards")
    assert len(dashboards) == len(build_dashboards())
    urls = push_dashboards(fake_grafana, "glsa_token", dashboards, datasource_uid="prom-x", folder_uid="f1")
    assert urls == [f"/d/{d['uid']}/x" for d in dashboards]
    for (method, path, body, auth), d in zip(_FakeGrafana.calls, dashboards, strict=True):
        assert (method, path, auth) == ("POST", "/api/dashboards/db", "Bearer glsa_token")
        assert body["overwrite"] is True and body["folderUid"] == "f1"
        assert body["dashboard"]["uid"] == d["uid"]
        assert DATASOURCE_UID not in json.dumps(body) and "prom-x" in json.dumps(body)
