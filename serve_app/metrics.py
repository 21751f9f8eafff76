"""Every Prometheus metric accuwatt exports: names, labels, units. The only module that names them.

Replicas record through Ray Serve's metrics API (``ray.serve.metrics``), which adds the
``application``, ``deployment`` and ``replica`` tags; Ray's metrics agent on each node exports them,
prefixed ``ray_``. Counters get ``_total`` appended by the exporter. So the names Prometheus and
the dashboards see are ``PROM[...]`` below.
"""

from __future__ import annotations

from typing import Any

ENERGY = "accuwatt_energy_joules"
"""Counter, J. Replica energy by ``domain`` (gpu/cpu/dram), ``source``, ``node`` and ``share``
(``attributed`` to requests, or ``idle``). metered = attributed + idle."""
NODE_ENERGY = "accuwatt_node_energy_joules"
"""Counter, J. The node account (one per node, each counter once): by ``node``, ``domain``, ``source``
and ``share``: ``baseline_idle``, ``replica``, ``router`` (with the proxy's part), ``proxy`` (the
rest), ``ray_system``, ``other``. Summed over ``share`` it is the node's metered energy; never add
``ENERGY`` to it (that is the replicas' view of the same joules)."""
REQUEST_ENERGY = "accuwatt_request_energy_joules"
"""Histogram, J. Energy attributed to one request, by ``source`` (no request-id labels)."""
POWER = "accuwatt_power_watts"
"""Gauge, W. Average power of the replica over the last export interval, by ``domain`` and ``source``."""
TEXTS = "accuwatt_classified_texts"
"""Counter. Texts classified, by ``source`` (so J per text = energy / texts)."""
METER_INFO = "accuwatt_meter_info"
"""Gauge (always 1). The replica's energy ``source``, ``node`` and ``devices``: which meter is live."""
EDGE_ERROR = "accuwatt_edge_error_joules"
"""Gauge, J. How far the replica's extrapolated share can drift from its exact node-account share in
one tick period: the largest miss a tick showed at its last ticks (``MeterInfo.edge_error_j``). A
request's ``edge_uncertainty_j`` is twice it, plus what the share moved in its window and the router's part
(its ``uncertainty_j``: that, capped at what the devices can draw over the window). No series for a meter whose counters
are read as they are (a tag's bound is then average power x update period)."""
METER_ERRORS = "accuwatt_meter_errors"
"""Counter. Meter reads that failed (the replica's tags are ``unavailable`` meanwhile)."""
REPLAY_ACCURACY = "accuwatt_replay_accuracy_ratio"
"""Gauge, ratio in [0, 1]. Accuracy of one replay run (``model``, ``dataset``, ``split``, ``source``)."""
REPLAY_ENERGY = "accuwatt_replay_energy_joules"
"""Gauge, J. Attributed energy of one replay run (same labels)."""
REPLAY_ACC_PER_WH = "accuwatt_replay_accuracy_per_wh"
"""Gauge, 1/Wh. The study's figure ``accuracy / energy_wh`` of one replay run (same labels)."""
REPLAY_TEXTS = "accuwatt_replay_texts"
"""Gauge. Texts classified in one replay run (same labels)."""
REPLAY_DURATION = "accuwatt_replay_duration_seconds"
"""Gauge, s. Duration of one replay run (same labels).

The replay gauges are not recorded through Ray: the replay driver pushes them to a Prometheus
Pushgateway (``serve_app.monitoring.publish_run_metrics``), so they carry no ``ray_`` prefix."""
REPLAY_LABELS = ("model", "dataset", "split", "source")

REQUEST_ENERGY_BOUNDARIES_J = [10.0**e for e in range(-5, 5)] + [2.5 * 10.0**e for e in range(-5, 4)]
REQUEST_ENERGY_BOUNDARIES_J.sort()


def prom(name: str, kind: str) -> str:
    """The series name Prometheus stores for a metric recorded through Ray."""
    base = f"ray_{name}"
    return base + "_total" if kind == "counter" else base


PROM = {
    "energy": prom(ENERGY, "counter"),
    "request_energy_bucket": prom(REQUEST_ENERGY, "histogram") + "_bucket",
    "request_energy_sum": prom(REQUEST_ENERGY, "histogram") + "_sum",
    "request_energy_count": prom(REQUEST_ENERGY, "histogram") + "_count",
    "power": prom(POWER, "gauge"),
    "node_energy": prom(NODE_ENERGY, "counter"),
    "texts": prom(TEXTS, "counter"),
    "meter_info": prom(METER_INFO, "gauge"),
    "meter_errors": prom(METER_ERRORS, "counter"),
    "edge_error": prom(EDGE_ERROR, "gauge"),
    # Pushed by the replay driver through the Pushgateway, not through Ray: no prefix.
    "replay_accuracy": REPLAY_ACCURACY,
    "replay_energy": REPLAY_ENERGY,
    "replay_acc_per_wh": REPLAY_ACC_PER_WH,
    "replay_texts": REPLAY_TEXTS,
    "replay_duration": REPLAY_DURATION,
}
"""Series names as Prometheus stores them (verified against a live Ray 2.60 metrics agent: the
``ray_`` prefix, ``_total`` on counters, ``_bucket``/``_sum``/``_count`` on histograms)."""

RAY_SERVE_METRICS = frozenset(
    {
        "ray_serve_deployment_request_counter_total",
        "ray_serve_deployment_processing_latency_ms_bucket",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_replica_processing_queries",
        "ray_serve_num_http_requests_total",
        "ray_serve_http_request_latency_ms_bucket",
    }
)
"""Ray Serve's own series the dashboards and rules use (Ray's names, not ours; units in Ray's: ms)."""

RAY_CORE_METRICS = frozenset({"ray_resources"})
"""Ray core series the rules use: ``ray_resources{Name="GPU"}`` tells which nodes have GPUs."""


def _keys(*names: str) -> Any:
    """Tag keys for ``ray.serve.metrics`` (whose stubs wrongly say ``Tuple[str]``: one key)."""
    return names


class ReplicaMetrics:
    """The metric objects of one replica (created inside the replica process)."""

    def __init__(self) -> None:
        from ray.serve import metrics as m

        self.energy = m.Counter(
            ENERGY,
            description="Replica energy (J), attributed or idle",
            tag_keys=_keys("domain", "source", "node", "share"),
        )
        self.request_energy = m.Histogram(
            REQUEST_ENERGY,
            description="Energy attributed to one request (J)",
            boundaries=REQUEST_ENERGY_BOUNDARIES_J,
            tag_keys=("source",),
        )
        self.power = m.Gauge(
            POWER, description="Average replica power (W)", tag_keys=_keys("domain", "source")
        )
        self.texts = m.Counter(TEXTS, description="Texts classified", tag_keys=("source",))
        # Ray's agent evicts a gauge series not recorded within two report intervals (Ray 2.60:
        # 2 x 10 s), so the deployment re-sets this one on every export (each second).
        self.meter_info = m.Gauge(
            METER_INFO,
            description="Energy meter of the replica (1)",
            tag_keys=_keys("source", "node", "devices"),
        )
        self.meter_errors = m.Counter(METER_ERRORS, description="Failed meter reads", tag_keys=("source",))
        self.edge_error = m.Gauge(
            EDGE_ERROR,
            description="Largest recent miss of the replica's extrapolated share over a tick period (J)",
            tag_keys=_keys("source", "node"),
        )


class NodeMetrics:
    """The node account's counter (created inside the energy agent, a plain Ray actor)."""

    def __init__(self) -> None:
        from ray.util import metrics as m

        self.energy = m.Counter(
            NODE_ENERGY,
            description="Node energy (J) by share: baseline idle and process groups, per node account",
            tag_keys=("node", "account", "domain", "source", "share"),
        )
        self._exported: dict[tuple[str, str], float] = {}

    def export(
        self, node: str, account: str, sources: dict[str, str], by_share_key: dict[tuple[str, str], float]
    ) -> None:
        """Add what grew since the last call. ``by_share_key``: (share, counter key) -> cumulative J.
        ``account``: the account's key (``agents.account_key``): two energy configurations on one node
        are two whole accounts of the same counters, kept apart so that no sum adds them."""
        for (share, key), total in by_share_key.items():
            delta = total - self._exported.get((share, key), 0.0)
            if delta <= 0:
                continue
            self._exported[(share, key)] = total
            domain = key.split(":", 1)[0]
            self.energy.inc(
                delta,
                tags(node=node, account=account, domain=domain, source=sources.get(key, "?"), share=share),
            )


def tags(**kv: Any) -> dict[str, str]:
    """Tag values as Ray wants them: strings."""
    return {k: str(v) for k, v in kv.items()}
