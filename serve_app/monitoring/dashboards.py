"""Grafana dashboards built from Python, so every query comes from one place.

``build_dashboards()`` returns the JSON models committed under ``monitoring/grafana/dashboards/``
(``accuwatt monitoring build`` writes them). Queries use the recording rules of ``queries.py``
where one exists (not for means: a mean divides summed rates, as recorded means split by source and
application do not add up), Ray Serve's own ``ray_serve_*`` series for traffic and latency (Ray's unit: ms),
and Grafana's ``$__rate_interval`` / ``$__range`` plus the dashboard variables ``$application``,
``$deployment`` and ``$dataset``; ``grafana.to_promql`` substitutes them for evaluation outside Grafana.
"""

from __future__ import annotations

from typing import Any

from serve_app.metrics import PROM, RAY_SERVE_METRICS
from serve_app.monitoring import queries as q
from serve_app.monitoring.grafana import (
    DATASOURCE_UID,
    Dashboard,
    Panel,
    Row,
    Target,
    dashboard_json,
    panel_queries,
    to_promql,
    variable_queries,
)

__all__ = [
    "DASHBOARDS",
    "DATASOURCE_UID",
    "build_dashboards",
    "panel_queries",
    "to_promql",
    "variable_queries",
]

FILTER = ('application=~"$application"', 'deployment=~"$deployment"')
F = "{" + ", ".join(FILTER) + "}"
"""The dashboard filter, added to every per-deployment selector."""
APP = '{application=~"$application"}'
ATTRIBUTED = "{" + ", ".join((*FILTER, 'share="attributed"')) + "}"
DS = '{dataset=~"$dataset"}'


def _serve(name: str) -> str:
    """A Ray Serve series name, checked against the list in ``serve_app/metrics.py``."""
    if name not in RAY_SERVE_METRICS:
        raise ValueError(f"{name} is not listed in serve_app.metrics.RAY_SERVE_METRICS")
    return name


def _quantiles(series: str, by: str, qs: tuple[float, ...], legend: str) -> tuple[Target, ...]:
    return tuple(
        Target(f"histogram_quantile({x}, sum by ({by}, le) ({series}))", f"{legend} p{round(x * 100)}")
        for x in qs
    )


def _rate(name: str, selector: str) -> str:
    return f"rate({name}{selector}[$__rate_interval])"


ENERGY_DASHBOARD = Dashboard(
    uid="accuwatt-energy",
    title="accuwatt: energy per deployment",
    description="Energy, power and J per request of every classifier deployment, beside Ray Serve's "
    "requests and latency. Energy comes from the replicas' meters (source per replica below).",
    variables=(
        ("application", f"label_values({q.METER_INFO}, application)"),
        ("deployment", f'label_values({q.METER_INFO}{{application=~"$application"}}, deployment)'),
    ),
    rows=(
        Row(
            "Energy",
            (
                Panel(
                    "Power per deployment, attributed vs idle",
                    "timeseries",
                    "watt",
                    (
                        Target(
                            f"sum by (deployment, source, share) ({q.POWER_BY_SHARE.record}{F})",
                            "{{deployment}} {{share}} ({{source}})",
                        ),
                    ),
                    "Metered power (rate of the energy counter over 1m); attributed = during requests. One "
                    "series per energy source: estimate (CPU time x TDP) is not a measurement.",
                    stacked=True,
                ),
                Panel(
                    "Power per replica",
                    "timeseries",
                    "watt",
                    (
                        Target(
                            f"sum by (deployment, replica, source, share) ({q.REPLICA_POWER_BY_SHARE.record}{F})",
                            "{{deployment}}/{{replica}} {{share}} ({{source}})",
                        ),
                    ),
                    stacked=True,
                ),
                Panel(
                    "Energy in range per deployment",
                    "bargauge",
                    "joule",
                    (
                        Target(
                            f"sum by (deployment, source, share) (increase({q.ENERGY}{F}[$__range]))",
                            "{{deployment}} {{share}} ({{source}})",
                            instant=True,
                        ),
                    ),
                    "Joules metered over the dashboard's time range, attributed vs idle, per energy source.",
                ),
                Panel(
                    "Share of metered energy (5m)",
                    "timeseries",
                    "percentunit",
                    (
                        Target(
                            f"sum by (application, deployment, share) ({q.ENERGY_SHARE.record}{F})",
                            "{{application}}/{{deployment}} {{share}}",
                        ),
                    ),
                    "attributed + idle = 1 per application and deployment.",
                ),
                Panel(
                    "Replica power by domain (last export interval)",
                    "timeseries",
                    "watt",
                    (
                        Target(
                            f"sum by (deployment, replica, domain, source) ({PROM['power']}{F})",
                            "{{deployment}}/{{replica}} {{domain}} ({{source}})",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Energy per request",
            (
                Panel(
                    "Energy per request (quantiles and mean)",
                    "timeseries",
                    "joule",
                    _quantiles(
                        f"{q.REQUEST_ENERGY_BUCKETS.record}{F}",
                        "deployment, source",
                        (0.5, 0.9, 0.99),
                        "{{deployment}} ({{source}})",
                    )
                    + (
                        # From summed rates, not the recorded means (split by application too), and per
                        # source: a deployment whose replicas use two meters has a mean per source, never
                        # a measurement and an estimate averaged into one figure.
                        Target(
                            f"sum by (deployment, source) ({_rate(q.REQ_SUM, F)})"
                            f" / sum by (deployment, source) ({_rate(q.REQ_COUNT, F)})",
                            "{{deployment}} mean ({{source}})",
                        ),
                    ),
                    "Attributed joules per request (histogram accuwatt_request_energy_joules).",
                ),
                Panel(
                    "Attributed energy per text",
                    "timeseries",
                    "joule",
                    (
                        Target(
                            f"sum by (deployment, source) ({_rate(q.ENERGY, ATTRIBUTED)})"
                            f" / sum by (deployment, source) ({_rate(q.TEXTS, F)})",
                            "{{deployment}} ({{source}})",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Traffic and latency (Ray Serve)",
            (
                Panel(
                    "Requests per second per deployment",
                    "timeseries",
                    "reqps",
                    (
                        Target(
                            f"sum by (deployment) ({_rate(_serve('ray_serve_deployment_request_counter_total'), F)})",
                            "{{deployment}}",
                        ),
                    ),
                ),
                Panel(
                    "Processing latency per deployment",
                    "timeseries",
                    "ms",
                    _quantiles(
                        _rate(_serve("ray_serve_deployment_processing_latency_ms_bucket"), F),
                        "deployment",
                        (0.5, 0.95),
                        "{{deployment}}",
                    ),
                ),
                Panel(
                    "HTTP requests per second by route and status",
                    "timeseries",
                    "reqps",
                    (
                        Target(
                            f"sum by (route, status_code) ({_rate(_serve('ray_serve_num_http_requests_total'), APP)})",
                            "{{route}} {{status_code}}",
                        ),
                    ),
                ),
                Panel(
                    "HTTP latency p95 by route",
                    "timeseries",
                    "ms",
                    _quantiles(
                        _rate(_serve("ray_serve_http_request_latency_ms_bucket"), APP),
                        "route",
                        (0.95,),
                        "{{route}}",
                    ),
                ),
                Panel(
                    "Queries in flight per replica",
                    "timeseries",
                    "short",
                    (
                        Target(
                            f"sum by (deployment, replica) ({_serve('ray_serve_replica_processing_queries')}{F})",
                            "{{deployment}}/{{replica}}",
                        ),
                    ),
                ),
                Panel(
                    "Healthy replicas",
                    "timeseries",
                    "short",
                    (
                        Target(
                            f"sum by (deployment) ({_serve('ray_serve_deployment_replica_healthy')}{F})",
                            "{{deployment}}",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Meters",
            (
                Panel(
                    "Energy source per replica",
                    "table",
                    "none",
                    (
                        Target(
                            f"max by (deployment, replica, source, node, devices) ({q.METER_INFO}{F})",
                            instant=True,
                        ),
                    ),
                    "estimate = CPU time x TDP (not a measurement); rapl / nvml / nvml-power are counters.",
                    width=16,
                ),
                Panel(
                    "Meter errors in range",
                    "bargauge",
                    "short",
                    (
                        Target(
                            f"sum by (deployment, replica) {q.increase_since_zero(q.METER_ERRORS + F, '$__range')} or on "
                            f"(deployment, replica) {q.zero_per_replica('deployment, replica', F)}",
                            "{{deployment}}/{{replica}}",
                            instant=True,
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Edge error per replica (a request's uncertainty is twice it)",
                    "timeseries",
                    "joule",
                    (
                        Target(
                            f"max by (deployment, replica) ({PROM['edge_error']}{F})",
                            "{{deployment}}/{{replica}}",
                        ),
                    ),
                    "How far a replica's extrapolated share can drift from its exact node-account share in one "
                    "tick period: the largest miss its last 8 account ticks showed. A request's edge_uncertainty_j "
                    "is twice it, plus what the share moved inside its window and the router's part (its "
                    "uncertainty_j caps that at what the devices can draw over the window). High after a "
                    "change of load or of the node's power per CPU-second; no series for a meter read as it is "
                    "(bound: average power x update period).",
                    width=24,
                ),
            ),
        ),
        Row(
            "Nodes",
            (
                Panel(
                    "Node power by share (the node account)",
                    "timeseries",
                    "watt",
                    (
                        Target(
                            f"sum by (node, account, source, share) ({q.NODE_POWER_BY_SHARE.record})",
                            "{{node}} {{share}} ({{source}})",
                        ),
                    ),
                    "Each node's counters, read once and split: baseline idle, classifier replicas, routers "
                    "(with the proxy's part they caused), the proxy's rest, Ray's own processes, everything "
                    "else. Stacked, they are the node's metered power. One series set per node account: two "
                    "energy configurations on one node are two whole accounts of it, never to be added.",
                    stacked=True,
                    width=24,
                ),
            ),
        ),
    ),
)

REPLAY_DASHBOARD = Dashboard(
    uid="accuwatt-replay",
    title="accuwatt: replay runs",
    description="Accuracy, energy and accuracy per Wh of replay runs, pushed by the replay driver to the "
    "Pushgateway (one group per model, dataset and split).",
    variables=(("dataset", f"label_values({PROM['replay_accuracy']}, dataset)"),),
    rows=(
        Row(
            "Accuracy per Wh",
            (
                Panel(
                    "Accuracy per Wh per model",
                    "bargauge",
                    "none",
                    (
                        Target(
                            f"{q.REPLAY_ACCURACY_PER_WH.record}{DS}",
                            "{{model}} {{dataset}}/{{split}} ({{source}})",
                            instant=True,
                        ),
                    ),
                    "accuracy / attributed Wh of one pass over the test split; higher is better.",
                    width=24,
                ),
            ),
        ),
        Row(
            "Runs",
            (
                Panel(
                    "Replay runs",
                    "table",
                    "none",
                    tuple(
                        Target(f"max by (model, dataset, split, source) ({PROM[key]}{DS})", key, instant=True)
                        for key in ("replay_accuracy", "replay_energy", "replay_texts", "replay_duration")
                    ),
                    width=24,
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (ENERGY_DASHBOARD, REPLAY_DASHBOARD)


def build_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> JSON model of every dashboard."""
    return {f"{d.uid}.json": dashboard_json(d) for d in DASHBOARDS}
