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
REQUEST_ENERGY = "accuwatt_request_energy_joules"
"""Histogram, J. Energy attributed to one request, by ``source`` (no request-id labels)."""
POWER = "accuwatt_power_watts"
"""Gauge, W. Average power of the replica over the last export interval, by ``domain`` and ``source``."""
TEXTS = "accuwatt_classified_texts"
"""Counter. Texts classified, by ``source`` (so J per text = energy / texts)."""
METER_INFO = "accuwatt_meter_info"
"""Gauge (always 1). The replica's energy ``source``, ``node`` and ``devices``: which meter is live."""
METER_ERRORS = "accuwatt_meter_errors"
"""Counter. Meter reads that failed (the replica's tags are ``unavailable`` meanwhile)."""
REPLAY_ACCURACY = "accuwatt_replay_accuracy_ratio"
REPLAY_ENERGY = "accuwatt_replay_energy_wh"
REPLAY_ACC_PER_WH = "accuwatt_replay_accuracy_per_wh"
"""Gauges published by the replay driver per ``model``, ``dataset`` and ``source`` (see router)."""

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
    "texts": prom(TEXTS, "counter"),
    "meter_info": prom(METER_INFO, "gauge"),
    "meter_errors": prom(METER_ERRORS, "counter"),
    "replay_accuracy": prom(REPLAY_ACCURACY, "gauge"),
    "replay_energy": prom(REPLAY_ENERGY, "gauge"),
    "replay_acc_per_wh": prom(REPLAY_ACC_PER_WH, "gauge"),
}


class ReplicaMetrics:
    """The metric objects of one replica (created inside the replica process)."""

    def __init__(self) -> None:
        from ray.serve import metrics as m

        self.energy = m.Counter(ENERGY, description="Replica energy (J), attributed or idle",
                                tag_keys=("domain", "source", "node", "share"))
        self.request_energy = m.Histogram(REQUEST_ENERGY, description="Energy attributed to one request (J)",
                                          boundaries=REQUEST_ENERGY_BOUNDARIES_J, tag_keys=("source",))
        self.power = m.Gauge(POWER, description="Average replica power (W)", tag_keys=("domain", "source"))
        self.texts = m.Counter(TEXTS, description="Texts classified", tag_keys=("source",))
        self.meter_info = m.Gauge(METER_INFO, description="Energy meter of the replica (1)",
                                  tag_keys=("source", "node", "devices"))
        self.meter_errors = m.Counter(METER_ERRORS, description="Failed meter reads", tag_keys=("source",))


def tags(**kv: Any) -> dict[str, str]:
    return {k: str(v) for k, v in kv.items()}
