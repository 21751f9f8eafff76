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
from serve_app.monitoring.dashboards import DATASOURCE_UID, build_dashboards, to_promql
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


def test_dashboards_without_uid_are_refused_at_load(tmp_path: Path) -> None:
    from serve_app.errors import UsageError

    (tmp_path / "a.json").write_text(json.dumps({"title": "no uid", "panels": []}))
    with pytest.raises(UsageError, match="no uid"):
        load_dashboards(tmp_path)


# -- panel queries and rules evaluated by promtool on synthetic series ------------------------------


def _panel_expr(title: str, legend_suffix: str = "") -> str:
    """The PromQL (Grafana variables at "All", ``$__range`` 5m) of the energy dashboard's one target of
    that panel whose legend ends with ``legend_suffix``."""
    model = build_dashboards()["accuwatt-energy.json"]
    (expr,) = [
        t["expr"]
        for p in model["panels"]
        if p["title"] == title
        for t in p.get("targets", [])
        if t["legendFormat"].endswith(legend_suffix)
    ]
    return to_promql(expr, range_="5m")


def _promtool_eval(
    tmp_path: Path,
    series: dict[str, str],
    expr: str,
    expected: dict[str, float],
    interval: str = "15s",
    eval_time: str = "8m",
) -> None:
    """``expr`` at ``eval_time`` over ``series`` (the committed recording rules loaded) must give
    exactly ``expected`` (labels -> value)."""
    doc = {
        "rule_files": [str(MONITORING_DIR / "rules" / "recording.yml")],
        "evaluation_interval": interval,
        "tests": [
            {
                "interval": interval,
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": eval_time,
                        "exp_samples": [{"labels": k, "value": v} for k, v in expected.items()],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "panel_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    r = run_promtool("test", "rules", str(path))
    assert r.returncode == 0, expr + "\n" + r.stdout + r.stderr


@needs_promtool
def test_mean_energy_per_request_of_a_deployment_on_two_meters(tmp_path: Path) -> None:
    """Two replicas of one deployment on different meters, 1 J per request measured and 2 J estimated:
    a mean per source (one mean of both, 1.5 J, would pass an estimate off as part of a measurement)."""
    from serve_app.monitoring.queries import REQ_COUNT, REQ_SUM

    series = {}
    for replica, source, joules in (("r1", "rapl", 15), ("r2", "estimate", 30)):
        labels = f'{{application="a", deployment="clf", replica="{replica}", source="{source}"}}'
        series[REQ_SUM + labels] = f"0+{joules}x40"
        series[REQ_COUNT + labels] = "0+15x40"
    expr = _panel_expr("Energy per request (quantiles and mean)", "{{deployment}} mean ({{source}})")
    _promtool_eval(
        tmp_path,
        series,
        expr,
        {'{deployment="clf", source="rapl"}': 1, '{deployment="clf", source="estimate"}': 2},
    )


@needs_promtool
def test_mean_energy_per_text_of_a_deployment_two_applications_serve(tmp_path: Path) -> None:
    """One classifier id in two applications (one on two meters): 0.5 J per text measured over both
    applications, 1 J per text estimated, each a mean of its own source."""
    from serve_app.monitoring.queries import ENERGY, TEXTS

    series = {}
    for app, replica, source, joules, texts in (
        ("a1", "r1", "rapl", 7.5, 15),
        ("a1", "r2", "estimate", 15, 15),
        ("a2", "q", "rapl", 15, 30),
    ):
        rep = f'application="{app}", deployment="clf", replica="{replica}", source="{source}"'
        series[f'{ENERGY}{{{rep}, share="attributed", domain="cpu", node="h"}}'] = f"0+{joules}x40"
        series[f'{ENERGY}{{{rep}, share="idle", domain="cpu", node="h"}}'] = "0+100x40"
        series[f"{TEXTS}{{{rep}}}"] = f"0+{texts}x40"
    expr = _panel_expr("Attributed energy per text", "{{deployment}} ({{source}})")
    _promtool_eval(
        tmp_path,
        series,
        expr,
        {'{deployment="clf", source="rapl"}': 0.5, '{deployment="clf", source="estimate"}': 1},
    )


@needs_promtool
def test_share_of_metered_energy_stays_a_share_per_application(tmp_path: Path) -> None:
    """Two applications serving one classifier id, each 25 % attributed: four series of 0.25 / 0.75,
    none above 1."""
    from serve_app.monitoring.queries import ENERGY

    series = {}
    for app, replica in (("a1", "r"), ("a2", "q")):
        rep = f'application="{app}", deployment="clf", replica="{replica}", domain="cpu", source="rapl", node="h"'
        series[f'{ENERGY}{{{rep}, share="attributed"}}'] = "0+1x40"
        series[f'{ENERGY}{{{rep}, share="idle"}}'] = "0+3x40"
    expr = _panel_expr("Share of metered energy (5m)", "{{application}}/{{deployment}} {{share}}")
    expected = {
        f'{{application="{app}", deployment="clf", share="{share}"}}': value
        for app in ("a1", "a2")
        for share, value in (("attributed", 0.25), ("idle", 0.75))
    }
    _promtool_eval(tmp_path, series, expr, expected)


@needs_promtool
def test_rate_rules_have_data_at_the_longest_scrape_interval_allowed(tmp_path: Path) -> None:
    """`--scrape-interval` is refused above MAX_SCRAPE_INTERVAL_S; at that interval (scrapes and rule
    evaluation) the rate1m rules still see samples."""
    from serve_app.monitoring.flags import MAX_SCRAPE_INTERVAL_S
    from serve_app.monitoring.queries import ENERGY

    interval = f"{MAX_SCRAPE_INTERVAL_S:g}s"
    rep = 'application="a", deployment="d", replica="r1", domain="cpu", source="rapl", node="h1"'
    series = {f'{ENERGY}{{{rep}, share="idle"}}': f"0+{2 * MAX_SCRAPE_INTERVAL_S:g}x40"}
    _promtool_eval(
        tmp_path,
        series,
        "deployment:accuwatt_power_watts:rate1m",
        {'deployment:accuwatt_power_watts:rate1m{application="a", deployment="d", source="rapl"}': 2},
        interval=interval,
    )
