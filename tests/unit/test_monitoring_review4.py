"""Review round 4 of the monitoring stack: the committed rules and the dashboards' queries, evaluated by
``promtool test rules`` on series shaped as Ray's metrics agent exports them.

- A counter appears in Ray's export only once recorded, at its first value (never a 0 sample before):
  ``increase()`` takes that first sample as its baseline, so a replica's first failed meter reads
  counted as none (no alert, 0 in the *Meter errors in range* panel).
- Every energy figure names its source: the energy and power panels keep ``source`` apart, never adding
  an estimate (CPU time x TDP) into a measurement under one legend.
- ``AccuwattReplicaNoEnergy`` fired for every deleted or replaced replica: Ray keeps exporting a dead
  actor's counters, flat, after it evicted its gauges.
- ``monitoring up`` checks both ports before it starts anything: the same port for Prometheus and the
  Pushgateway, or a Prometheus port another process holds, is refused with nothing started (it used to
  start the Pushgateway first, then call it "another process" on Prometheus' port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.monitoring.dashboards import build_dashboards
from serve_app.monitoring.queries import ENERGY, METER_ERRORS, METER_INFO, REQ_BUCKET
from serve_app.monitoring.stack import MONITORING_DIR, find_binary
from serve_app.ports import free_port
from tests.unit.test_monitoring_config import _panel_expr

promtool = find_binary("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (scripts/setup.sh test)")
RULES = MONITORING_DIR / "rules"
REPO = Path(__file__).resolve().parents[2]


def _promtool_test(tmp_path: Path, test: dict[str, Any], interval: str = "1m") -> None:
    """One ``promtool test rules`` case over the committed recording and alert rules; must pass."""
    assert promtool
    doc = {
        "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
        "evaluation_interval": interval,
        "tests": [{"interval": interval, **test}],
    }
    path = tmp_path / "review4_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    r = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


# -- the first failed meter reads of a replica --------------------------------------------------------

REP = 'application="a", deployment="d", replica="r3"'
METER_INFO_R3 = f'{METER_INFO}{{{REP}, source="rapl", node="h1", devices="", NodeAddress="n1"}}'
# Ray exports the error counter once the first read failed: no series, then 3 (three failed reads in
# one export), never a 0 sample before.
ERRORS_R3 = f'{METER_ERRORS}{{{REP}, source="rapl", NodeAddress="n1"}}'
FIRST_ERRORS_AT_10M = "_ _ _ _ _ _ _ _ _ _ 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3"
ENERGY_R3 = f'{ENERGY}{{{REP}, share="idle", domain="cpu", source="rapl", node="h1"}}'
ALERT_ANNOTATIONS = {
    "summary": "Energy meter of r3 fails",
    "description": "3 meter reads failed in 5 minutes; the replica's answers carry source `unavailable`.",
}


@needs_promtool
def test_meter_errors_alert_fires_on_a_replicas_first_failed_reads(tmp_path: Path) -> None:
    """A replica metered for 10 minutes, then three reads fail within one export: the alert fires
    (for the 5 minutes of its window, not after)."""
    _promtool_test(
        tmp_path,
        {
            "input_series": [
                {"series": METER_INFO_R3, "values": "1x24"},
                {"series": ENERGY_R3, "values": "0+60x24"},
                {"series": ERRORS_R3, "values": FIRST_ERRORS_AT_10M},
            ],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": "AccuwattMeterErrors", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "AccuwattMeterErrors",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "application": "a",
                                "deployment": "d",
                                "replica": "r3",
                            },
                            "exp_annotations": ALERT_ANNOTATIONS,
                        }
                    ],
                },
                {"eval_time": "17m", "alertname": "AccuwattMeterErrors", "exp_alerts": []},
            ],
        },
    )


@needs_promtool
def test_a_prometheus_that_saw_nothing_before_does_not_count_a_replicas_history(tmp_path: Path) -> None:
    """A Prometheus started (or back) at 10m finds a replica whose counter says 3 failed reads some time
    before: no alert (the reads did not fail within the last 5 minutes as far as it knows)."""
    _promtool_test(
        tmp_path,
        {
            "input_series": [
                {"series": METER_INFO_R3, "values": "_ _ _ _ _ _ _ _ _ _ 1x14"},
                {"series": ERRORS_R3, "values": FIRST_ERRORS_AT_10M},
            ],
            "alert_rule_test": [{"eval_time": "12m", "alertname": "AccuwattMeterErrors", "exp_alerts": []}],
        },
    )


@needs_promtool
def test_meter_errors_panel_counts_a_replicas_first_failed_reads(tmp_path: Path) -> None:
    expr = _panel_expr("Meter errors in range")
    _promtool_test(
        tmp_path,
        {
            "input_series": [
                {"series": METER_INFO_R3, "values": "1x24"},
                {"series": ERRORS_R3, "values": FIRST_ERRORS_AT_10M},
            ],
            "promql_expr_test": [
                {
                    "expr": expr,
                    "eval_time": "12m",
                    "exp_samples": [{"labels": '{deployment="d", replica="r3"}', "value": 3}],
                },
                {
                    "expr": expr,
                    "eval_time": "17m",
                    "exp_samples": [{"labels": '{deployment="d", replica="r3"}', "value": 0}],
                },
            ],
        },
    )


# -- a deleted replica is not a replica without energy -------------------------------------------------


@needs_promtool
def test_a_deleted_replica_does_not_alert_as_reporting_no_energy(tmp_path: Path) -> None:
    """Ray 2.60 keeps exporting a killed actor's counter (flat) while it evicts its gauges within 20 s
    (seen on a live Ray: still there 121 s after ``ray.kill``). Replica r9, deleted at 10m, stays
    quiet; r2, alive with a live meter but exporting nothing, still fires."""
    r9 = 'application="a", deployment="d", replica="r9"'
    r2 = 'application="a", deployment="d", replica="r2"'
    _promtool_test(
        tmp_path,
        {
            "input_series": [
                {"series": f'{METER_INFO}{{{r9}, source="rapl", NodeAddress="n1"}}', "values": "1x10"},
                {
                    "series": f'{ENERGY}{{{r9}, share="idle", domain="cpu", source="rapl", node="h1"}}',
                    "values": "0+60x10 600x30",
                },
                {"series": f'{METER_INFO}{{{r2}, source="rapl", NodeAddress="n1"}}', "values": "1x40"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "AccuwattReplicaNoEnergy",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "application": "a",
                                "deployment": "d",
                                "replica": "r2",
                            },
                            "exp_annotations": {
                                "summary": "Replica r2 of d reports no energy",
                                "description": "A replica with a live meter exported no joules for 5 minutes: its "
                                "sampler is stuck or its meter fails (see accuwatt_meter_errors_total and /v1/energy).",
                            },
                        }
                    ],
                }
            ],
        },
    )


# -- every energy figure names its source -------------------------------------------------------------


def _two_meters() -> list[dict[str, str]]:
    """One deployment, two replicas: r1 measured (rapl, 5 W attributed, 1 W idle) and r2 estimated
    (7 W attributed, 2 W idle); 15 s scrapes."""
    series = []
    for replica, source, attributed_w, idle_w in (("r1", "rapl", 5, 1), ("r2", "estimate", 7, 2)):
        rep = f'application="a", deployment="clf", replica="{replica}", domain="cpu", source="{source}"'
        for share, watts in (("attributed", attributed_w), ("idle", idle_w)):
            series.append(
                {
                    "series": f'{ENERGY}{{{rep}, node="h-{replica}", share="{share}"}}',
                    "values": f"0+{15 * watts}x40",
                }
            )
        series.append(
            {"series": f"ray_accuwatt_power_watts{{{rep}}}", "values": f"{attributed_w + idle_w}x40"}
        )
    return series


@needs_promtool
@pytest.mark.parametrize(
    ("title", "expected"),
    [
        (
            "Power per deployment, attributed vs idle",
            {
                '{deployment="clf", share="attributed", source="rapl"}': 5,
                '{deployment="clf", share="idle", source="rapl"}': 1,
                '{deployment="clf", share="attributed", source="estimate"}': 7,
                '{deployment="clf", share="idle", source="estimate"}': 2,
            },
        ),
        (
            "Power per replica",
            {
                '{deployment="clf", replica="r1", share="attributed", source="rapl"}': 5,
                '{deployment="clf", replica="r1", share="idle", source="rapl"}': 1,
                '{deployment="clf", replica="r2", share="attributed", source="estimate"}': 7,
                '{deployment="clf", replica="r2", share="idle", source="estimate"}': 2,
            },
        ),
        (
            "Energy in range per deployment",
            {
                '{deployment="clf", share="attributed", source="rapl"}': 5 * 300,
                '{deployment="clf", share="idle", source="rapl"}': 1 * 300,
                '{deployment="clf", share="attributed", source="estimate"}': 7 * 300,
                '{deployment="clf", share="idle", source="estimate"}': 2 * 300,
            },
        ),
        (
            "Replica power by domain (last export interval)",
            {
                '{deployment="clf", replica="r1", domain="cpu", source="rapl"}': 6,
                '{deployment="clf", replica="r2", domain="cpu", source="estimate"}': 9,
            },
        ),
    ],
)
def test_energy_panels_keep_measured_and_estimated_apart(
    tmp_path: Path, title: str, expected: dict[str, float]
) -> None:
    _promtool_test(
        tmp_path,
        {
            "input_series": _two_meters(),
            "promql_expr_test": [
                {
                    "expr": _panel_expr(title),
                    "eval_time": "8m",
                    "exp_samples": [{"labels": k, "value": v} for k, v in expected.items()],
                }
            ],
        },
        interval="15s",
    )
    (legend,) = [
        t["legendFormat"]
        for p in build_dashboards()["accuwatt-energy.json"]["panels"]
        if p["title"] == title
        for t in p["targets"]
    ]
    # ...and Grafana shows it
    assert "{{source}}" in legend, legend


@needs_promtool
def test_energy_per_request_quantiles_per_source(tmp_path: Path) -> None:
    """rapl requests all below 0.1 J, estimated ones between 0.1 and 1 J: the p50 of each source, not
    one p50 of the two mixed (0.1 J, which neither meter saw as its median)."""
    series = []
    for replica, source, counts in (("r1", "rapl", (1, 1, 1)), ("r2", "estimate", (0, 1, 1))):
        rep = f'application="a", deployment="clf", replica="{replica}", source="{source}"'
        for le, n in zip(("0.1", "1", "+Inf"), counts, strict=True):
            series.append({"series": f'{REQ_BUCKET}{{{rep}, le="{le}"}}', "values": f"0+{15 * n}x40"})
    _promtool_test(
        tmp_path,
        {
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": _panel_expr("Energy per request (quantiles and mean)", " p50"),
                    "eval_time": "8m",
                    "exp_samples": [
                        {"labels": '{deployment="clf", source="rapl"}', "value": 0.05},
                        {"labels": '{deployment="clf", source="estimate"}', "value": 0.55},
                    ],
                }
            ],
        },
        interval="15s",
    )


# -- `monitoring up`: both ports before anything starts ------------------------------------------------


def _fake_bins(folder: Path) -> Path:
    """``prometheus`` and ``prometheus-pushgateway`` for ``$ACCUWATT_PROMETHEUS_DIR``: each writes its
    PID to ``folder/<name>.pid`` and never answers (a start would wait for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("prometheus", "prometheus-pushgateway"):
        exe = folder / name
        exe.write_text(f'#!/bin/sh\necho $$ > "{folder / (name + ".pid")}"\nexec sleep 120\n')
        exe.chmod(0o755)
    return folder


def _kill_started(folder: Path) -> list[str]:
    """Names of the fakes that were started; kills any still running (by the PID it wrote)."""
    started = []
    for pidfile in folder.glob("*.pid"):
        started.append(pidfile.stem)
        text = pidfile.read_text().strip()
        if text.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGKILL)
    return sorted(started)


def _up(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    ray = tmp_path / "ray"
    session = ray / "session_2026-01-01_00-00-00_000000_1"
    session.mkdir(parents=True)
    (ray / "session_latest").symlink_to(session)
    (session / "metrics_export_port_abc").write_text("41234")
    env = {
        **os.environ,
        "ACCUWATT_PROMETHEUS_DIR": str(_fake_bins(tmp_path / "bin")),
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "serve_app.cli", "monitoring", "up", "--ray-temp-dir", str(ray)]
    cmd += ["--work-dir", str(tmp_path / "work"), *flags]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)


@pytest.mark.timeout(120)
def test_up_refuses_one_port_for_prometheus_and_the_pushgateway(tmp_path: Path) -> None:
    port = str(free_port())
    try:
        done = _up(tmp_path, "--port", port, "--pushgateway-port", port)
    finally:
        started = _kill_started(tmp_path / "bin")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("accuwatt: error: ") and "--pushgateway-port" in line, line
    assert started == [], f"started {started} before refusing"


@pytest.mark.timeout(120)
def test_up_refuses_a_taken_prometheus_port_before_starting_the_pushgateway(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        try:
            done = _up(tmp_path, "--port", port, "--pushgateway-port", str(free_port()))
        finally:
            started = _kill_started(tmp_path / "bin")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"127.0.0.1:{port} is in use" in line and "--port" in line, line
    assert started == [], f"started {started} before refusing"
