"""Pushing to the monitoring stack: replay run metrics to the Pushgateway, dashboards to Grafana.

Replay runs are batch jobs, not services Prometheus could scrape, so the replay driver pushes each
run's figures to a Prometheus Pushgateway (Debian: ``prometheus-pushgateway``), which Prometheus
scrapes with ``honor_labels`` (job ``accuwatt_replay`` in ``monitoring/prometheus.yml``). One group
per (model, dataset, split): a new run of the same group replaces the previous one.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from serve_app import metrics as m
from serve_app.errors import UsageError
from serve_app.monitoring.dashboards import DATASOURCE_UID
from serve_app.replay.results import load_run, run_metrics

REPLAY_JOB = "accuwatt_replay"
J_PER_WH = 3600.0


def publish_run_metrics(
    gateway_url: str,
    model: str,
    dataset: str,
    source: str,
    accuracy: float,
    energy_wh: float | None,
    accuracy_per_wh: float | None,
    *,
    split: str = "mean",
    n_texts: int | None = None,
    duration_s: float | None = None,
    job: str = REPLAY_JOB,
    timeout_s: float = 5.0,
) -> None:
    """Push one replay run's metrics to a Pushgateway (replacing that model/dataset/split's last push).

    Units: ``accuracy`` a ratio in [0, 1]; ``energy_wh`` Wh (published in J as
    ``accuwatt_replay_energy_joules``); ``accuracy_per_wh`` 1/Wh; ``duration_s`` s. ``None`` figures
    are left out, never published as zero. ``source`` is the run's energy source (``estimate``,
    ``rapl``, ``nvml``, ``mixed:...``). Raises ``OSError``/``urllib.error.URLError`` when the gateway
    cannot be reached (the caller decides whether that fails the run).
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float | None) -> None:
        if value is None:
            return
        g = Gauge(name, doc, ["source"], registry=registry)
        g.labels(source=source).set(float(value))

    gauge(m.REPLAY_ACCURACY, "Accuracy of the replay run (ratio)", accuracy)
    gauge(
        m.REPLAY_ENERGY,
        "Attributed energy of the replay run (J)",
        None if energy_wh is None else energy_wh * J_PER_WH,
    )
    gauge(m.REPLAY_ACC_PER_WH, "Accuracy per Wh of the replay run (1/Wh)", accuracy_per_wh)
    gauge(m.REPLAY_TEXTS, "Texts classified in the replay run", None if n_texts is None else float(n_texts))
    gauge(m.REPLAY_DURATION, "Duration of the replay run (s)", duration_s)
    push_to_gateway(
        gateway_url,
        job=job,
        registry=registry,
        timeout=timeout_s,
        grouping_key={"model": model, "dataset": dataset, "split": split},
    )


def publish_runs(gateway_url: str, folders: list[Path], timeout_s: float = 5.0) -> list[tuple[str, str]]:
    """Push every split's metrics and their mean (``split="mean"``) of each replay run folder (their
    ``records.jsonl``, as ``accuwatt report`` computes them) with `publish_run_metrics`; returns the
    (model, split) groups pushed. Stops at the first failure and raises it (``OSError``, incl.
    ``urllib.error.URLError``, or ``http.client.HTTPException``)."""
    pushed = []
    for folder in folders:
        run = load_run(folder)
        per_split, mean = run_metrics(run)
        for fig in [*per_split, *([mean] if mean is not None else [])]:
            publish_run_metrics(
                gateway_url,
                run.model,
                run.info.dataset,
                fig.energy_source,
                fig.accuracy,
                fig.energy_wh,
                fig.accuracy_per_wh,
                split=fig.split,
                n_texts=fig.n_texts,
                duration_s=fig.duration_s,
                timeout_s=timeout_s,
            )
            pushed.append((run.model, fig.split))
    return pushed


def load_dashboards(folder: Path) -> list[dict[str, Any]]:
    """The committed dashboard JSON models under ``folder``; a folder that is missing, holds no
    ``*.json`` or holds one that is not a dashboard (a JSON object with a ``uid``) is refused
    (`UsageError`)."""
    if not folder.is_dir():
        raise UsageError(f"--dashboards {folder}: not a folder")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise UsageError(f"--dashboards {folder}: holds no *.json dashboards")
    out = []
    for p in files:
        try:
            model = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
            raise UsageError(f"{p}: not a dashboard JSON file ({' '.join(str(exc).split())})") from None
        if not isinstance(model, dict):
            raise UsageError(f"{p}: not a dashboard JSON object")
        if not isinstance(model.get("uid"), str) or not model["uid"]:
            raise UsageError(f"{p}: the dashboard has no uid (Grafana would add a new copy at every push)")
        out.append(model)
    return out


def push_dashboards(
    grafana_url: str,
    token: str | None,
    dashboards: list[dict[str, Any]],
    *,
    datasource_uid: str | None = None,
    folder_uid: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create or overwrite the dashboards in Grafana through its HTTP API (``grafana-client``).

    ``datasource_uid`` rewrites the Prometheus datasource uid the dashboards name (default
    ``accuwatt-prometheus``, the provisioned one). Returns the URLs Grafana reports.
    """
    from grafana_client import GrafanaApi

    credential: Any = token if token else basic_auth
    api = GrafanaApi.from_url(grafana_url, credential=credential, timeout=timeout_s)
    urls = []
    for model in dashboards:
        body = copy.deepcopy(model)
        if datasource_uid:
            body = json.loads(
                json.dumps(body).replace(f'"uid": "{DATASOURCE_UID}"', f'"uid": "{datasource_uid}"')
            )
        body.pop("id", None)
        payload: dict[str, Any] = {"dashboard": body, "overwrite": True, "message": "accuwatt monitoring"}
        if folder_uid:
            payload["folderUid"] = folder_uid
        answer = api.dashboard.update_dashboard(payload)
        urls.append(str(answer.get("url") or body.get("uid", "")))
    return urls
