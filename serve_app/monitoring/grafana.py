"""The Grafana JSON model: small frozen types for dashboards, rows, panels and queries, rendered to
the JSON Grafana 10/11 imports, and helpers to read queries back out of that JSON."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DATASOURCE_UID = "accuwatt-prometheus"
"""The uid of the provisioned Prometheus datasource (``grafana/provisioning/datasources``)."""


@dataclass(frozen=True)
class Target:
    """One query of a panel; ``instant`` for tables and bar gauges."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """One Grafana panel: ``kind`` is a Grafana panel type, ``unit`` a Grafana unit id."""

    title: str
    kind: str
    unit: str
    targets: tuple[Target, ...]
    description: str = ""
    width: int = 12
    stacked: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out left to right on Grafana's 24-column grid."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: its uid is also its file name under ``monitoring/grafana/dashboards``."""

    uid: str
    title: str
    description: str
    variables: tuple[tuple[str, str], ...]
    """(name, PromQL of label_values) pairs, in dependency order."""
    rows: tuple[Row, ...]


def _panel_json(p: Panel, pid: int, x: int, y: int, height: int) -> dict[str, Any]:
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    targets = [
        {
            "datasource": ds,
            "refId": chr(ord("A") + i),
            "expr": t.expr,
            "legendFormat": t.legend or "__auto",
            "instant": t.instant,
            "range": not t.instant,
            **({"format": "table"} if p.kind == "table" else {}),
        }
        for i, t in enumerate(p.targets)
    ]
    custom: dict[str, Any] = {}
    if p.kind == "timeseries":
        custom = {
            "drawStyle": "line",
            "fillOpacity": 30 if p.stacked else 0,
            "stacking": {"mode": "normal" if p.stacked else "none", "group": "A"},
        }
    out: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": ds,
        "gridPos": {"h": height, "w": p.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": p.unit, "custom": custom}, "overrides": []},
        "options": p.options or {},
    }
    if p.kind == "table":
        out["transformations"] = [{"id": "merge", "options": {}}]
    return out


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of one dashboard (schema of Grafana 10/11)."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in d.rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        pid, y, x = pid + 1, y + 1, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(p, pid, x, y, 8))
            pid, x = pid + 1, x + p.width
        y += 8
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    variables = [
        {
            "name": name,
            "type": "query",
            "datasource": ds,
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }
        for name, query in d.variables
    ]
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["accuwatt", "energy"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


def panel_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a dashboard JSON model."""
    return [(p["title"], t["expr"]) for p in model["panels"] for t in p.get("targets", [])]


def variable_queries(model: dict[str, Any]) -> list[str]:
    """The PromQL inside the variables' ``label_values(...)`` queries."""
    out = []
    for v in model.get("templating", {}).get("list", []):
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", v["definition"])
        if m:
            out.append(m.group(1))
    return out


def to_promql(expr: str, rate_interval: str = "1m", range_: str = "5m") -> str:
    """Substitute Grafana's variables as Grafana would with every variable at "All"."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", range_)
        .replace("$application", ".*")
        .replace("$deployment", ".*")
        .replace("$dataset", ".*")
    )
