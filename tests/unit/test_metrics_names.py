"""Every metric name a dashboard or rule reads is one ``serve_app/metrics.py`` names: ours (``PROM``),
Ray Serve's and Ray core's listed there, or a recording rule's output. Names follow Prometheus'
conventions (base units, ``_total`` on counters)."""

from __future__ import annotations

import re

import pytest
import yaml

from serve_app import metrics as m
from serve_app.monitoring.dashboards import build_dashboards, panel_queries, variable_queries
from serve_app.monitoring.promql import metric_names
from serve_app.monitoring.queries import ALERTS, RECORDING
from serve_app.monitoring.stack import MONITORING_DIR

RECORDED = {r.record for r in RECORDING}
ALLOWED = set(m.PROM.values()) | m.RAY_SERVE_METRICS | m.RAY_CORE_METRICS | RECORDED


def committed_queries() -> list[tuple[str, str]]:
    """(where, expr) of every query in the committed files (what Prometheus and Grafana load)."""
    out = []
    for f in ("recording.yml", "alerts.yml"):
        doc = yaml.safe_load((MONITORING_DIR / "rules" / f).read_text())
        out += [
            (f"{f}: {r.get('record') or r.get('alert')}", r["expr"])
            for g in doc["groups"]
            for r in g["rules"]
        ]
    for name, model in build_dashboards().items():
        out += [(f"{name}: {title}", expr) for title, expr in panel_queries(model)]
        out += [(f"{name}: variable", expr) for expr in variable_queries(model)]
    return out


@pytest.mark.parametrize(("where", "expr"), committed_queries())
def test_queries_use_only_named_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr}"
    assert names <= ALLOWED, f"{where}: unknown {sorted(names - ALLOWED)}"


def test_every_exported_metric_is_used_somewhere() -> None:
    used = set().union(*(metric_names(e) for _, e in committed_queries()))
    assert set(m.PROM.values()) - used == set()
    assert (m.RAY_SERVE_METRICS | m.RAY_CORE_METRICS) - used == set()


def test_exported_names_follow_conventions() -> None:
    for name in m.PROM.values():
        assert re.fullmatch(r"[a-z_]+", name), name
        assert name.startswith(("ray_accuwatt_", "accuwatt_replay_")), name
    assert m.PROM["energy"] == "ray_accuwatt_energy_joules_total"
    assert m.PROM["texts"].endswith("_total") and m.PROM["meter_errors"].endswith("_total")
    assert m.PROM["request_energy_bucket"] == "ray_accuwatt_request_energy_joules_bucket"
    assert not any(
        n.endswith(("_wh", "_kwh", "_ms"))
        for n in (m.ENERGY, m.REQUEST_ENERGY, m.POWER, m.REPLAY_ENERGY, m.REPLAY_DURATION)
    )


def test_recording_rule_names_follow_level_metric_operation() -> None:
    for r in RECORDING:
        level, metric, op = r.record.split(":")
        assert level and op and metric.startswith("accuwatt_"), r.record
    assert len(RECORDED) == len(RECORDING)
    assert len({a.name for a in ALERTS}) == len(ALERTS)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (a, b) (rate(x_total{le="1", c=~"$d"}[1m]))', {"x_total"}),
        ("histogram_quantile(0.5, sum by (le) (lvl:y_bucket:rate1m))", {"lvl:y_bucket:rate1m"}),
        ("a / ignoring (share) group_left () sum by (c) (increase(b[5m]))", {"a", "b"}),
        ('(x or on (r) (0 * max by (r) (y{s="or"}))) == 0', {"x", "y"}),
        ('max by (n) (i{source="estimate"}) * on (n) group_left () (sum by (n) (z{Name="GPU"}))', {"i", "z"}),
    ],
)
def test_metric_name_scanner(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
