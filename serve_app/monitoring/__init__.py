"""Monitoring: Prometheus rules and Grafana dashboards built from one place, a local Prometheus
launcher against the Ray cluster, and the replay driver's Pushgateway publisher.

- ``queries.py``: every PromQL expression (recording and alert rules); ``dashboards.py``: the Grafana
  dashboards; ``build.py`` writes both into ``monitoring/``.
- ``stack.py``: ``accuwatt monitoring up`` (Prometheus + Pushgateway on loopback).
- ``push.py``: ``publish_run_metrics`` / ``publish_runs`` (``accuwatt replay --pushgateway`` ->
  Pushgateway) and ``push_dashboards`` (Grafana API).
- ``flags.py``: the flags' argparse types (``HOST:PORT``, the longest scrape interval, ``USER:PASSWORD``).
"""

from __future__ import annotations

from serve_app.monitoring.cli import register
from serve_app.monitoring.push import publish_run_metrics

__all__ = ["publish_run_metrics", "register"]
