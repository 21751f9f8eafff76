"""Every PromQL expression accuwatt ships: recording rules, alert rules, and the helpers the dashboard
builder uses. The only place queries are written; names come from ``serve_app.metrics.PROM``.

Rule names follow Prometheus' ``level:metric:operations`` convention. Units: W for ``*_watts``
(J/s, from counter rates), J for ``*_joules``, a ratio in [0, 1] for ``*:ratio*``, 1/Wh for the
replay's accuracy per Wh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.metrics import PROM

ENERGY = PROM["energy"]
NODE_ENERGY = PROM["node_energy"]
REQ_BUCKET = PROM["request_energy_bucket"]
REQ_SUM = PROM["request_energy_sum"]
REQ_COUNT = PROM["request_energy_count"]
TEXTS = PROM["texts"]
METER_INFO = PROM["meter_info"]
METER_ERRORS = PROM["meter_errors"]
REPLAY_ACC_PER_WH = PROM["replay_acc_per_wh"]

DEP = "application, deployment"
REP = "application, deployment, replica"
RATE_WINDOW = "1m"
METER_ON = 'source!="off"'
"""The replicas that meter: ``energy.meter: off`` exports ``meter_info{source="off"}`` and no energy."""
SHARE_WINDOW = "5m"


@dataclass(frozen=True)
class Recording:
    """One recording rule: ``record`` is the new series, ``expr`` its PromQL, ``unit`` for humans."""

    record: str
    expr: str
    unit: str

    def to_rule(self) -> dict[str, Any]:
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class Alert:
    """One alert: it fires while ``value`` satisfies ``condition`` for ``for_``.

    ``value`` is written to be non-empty while the system is healthy (zeros where there is nothing to
    count), so the integration test can check it returns data; ``expr = (value) condition`` (the
    parentheses matter: comparisons bind tighter than ``or``).
    """

    name: str
    value: str
    condition: str
    for_: str
    severity: str
    summary: str
    description: str

    @property
    def expr(self) -> str:
        return f"({self.value}) {self.condition}"

    def to_rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def zero_per_replica(by: str = REP, selector: str = "") -> str:
    """A 0 for every replica that has a live meter (``accuwatt_meter_info`` whose source is not
    ``off``: a replica deployed with ``energy.meter: off`` never exports energy), to fill gaps with
    ``or``. ``selector``: more matchers, ``{...}``."""
    matchers = [m for m in (selector.strip().removeprefix("{").removesuffix("}").strip(),) if m]
    return f"(0 * max by ({by}) ({METER_INFO}{{{', '.join([*matchers, METER_ON])}}}))"


def increase_since_zero(series: str, window: str) -> str:
    """``increase(series[window])`` per series, also counting what a counter series created inside the
    window holds. Ray exports a counter only once it was recorded, starting at its first value (never
    0), and ``increase`` takes a series' first sample as its baseline: a replica's first failed reads
    (one export's worth) would count as none. A series absent ``window`` ago of a replica whose
    ``accuwatt_meter_info`` was there then counts with its current value (it started at 0 inside the
    window); without that condition a Prometheus that saw nothing then (fresh, or down meanwhile) would
    count a replica's whole history."""
    return (
        f"((({series} unless {series} offset {window}) and on ({REP}) ({METER_INFO} offset {window}))"
        f" or increase({series}[{window}]))"
    )


POWER_BY_SHARE = Recording(
    "deployment_share:accuwatt_power_watts:rate1m",
    f"sum by ({DEP}, source, share) (rate({ENERGY}[{RATE_WINDOW}]))",
    "W",
)
POWER = Recording(
    "deployment:accuwatt_power_watts:rate1m", f"sum by ({DEP}, source) (rate({ENERGY}[{RATE_WINDOW}]))", "W"
)
REPLICA_POWER_BY_SHARE = Recording(
    "replica_share:accuwatt_power_watts:rate1m",
    f"sum by ({REP}, source, share) (rate({ENERGY}[{RATE_WINDOW}]))",
    "W",
)
REQUEST_ENERGY_BUCKETS = Recording(
    "deployment_le:accuwatt_request_energy_joules_bucket:rate1m",
    f"sum by ({DEP}, source, le) (rate({REQ_BUCKET}[{RATE_WINDOW}]))",
    "requests/s per bucket (J bounds)",
)
JOULES_PER_REQUEST = Recording(
    "deployment:accuwatt_request_energy_joules:mean1m",
    f"sum by ({DEP}, source) (rate({REQ_SUM}[{RATE_WINDOW}]))"
    f" / sum by ({DEP}, source) (rate({REQ_COUNT}[{RATE_WINDOW}]))",
    "J per request",
)
JOULES_PER_TEXT = Recording(
    "deployment:accuwatt_text_energy_joules:mean1m",
    f'sum by ({DEP}, source) (rate({ENERGY}{{share="attributed"}}[{RATE_WINDOW}]))'
    f" / sum by ({DEP}, source) (rate({TEXTS}[{RATE_WINDOW}]))",
    "attributed J per classified text",
)
ENERGY_SHARE = Recording(
    "deployment_share:accuwatt_energy_joules:ratio5m",
    f"sum by ({DEP}, share) (increase({ENERGY}[{SHARE_WINDOW}]))"
    f" / ignoring (share) group_left () sum by ({DEP}) (increase({ENERGY}[{SHARE_WINDOW}]))",
    "ratio of metered energy (attributed or idle)",
)
NODE_POWER_BY_SHARE = Recording(
    "node_share:accuwatt_node_power_watts:rate1m",
    f"sum by (node, account, domain, source, share) (rate({NODE_ENERGY}[{RATE_WINDOW}]))",
    "W (the node account: baseline idle and each process-group kind; sums to the node's power per account: "
    "two energy configurations on one node are two whole accounts of it, never to be added)",
)
REPLAY_ACCURACY_PER_WH = Recording(
    "model_dataset:accuwatt_replay_accuracy_per_wh:max",
    f"max by (model, dataset, split, source) ({REPLAY_ACC_PER_WH})",
    "accuracy per Wh (1/Wh)",
)

RECORDING: tuple[Recording, ...] = (
    POWER_BY_SHARE,
    POWER,
    REPLICA_POWER_BY_SHARE,
    REQUEST_ENERGY_BUCKETS,
    JOULES_PER_REQUEST,
    JOULES_PER_TEXT,
    ENERGY_SHARE,
    NODE_POWER_BY_SHARE,
    REPLAY_ACCURACY_PER_WH,
)

ALERTS: tuple[Alert, ...] = (
    Alert(
        "AccuwattReplicaNoEnergy",
        # Only replicas whose meter_info is live: Ray keeps exporting a dead replica's counters (flat)
        # after it evicted its gauges, and a deleted or replaced replica is no stuck one.
        f"(sum by ({REP}) (increase({ENERGY}[{SHARE_WINDOW}])) and on ({REP}) {METER_INFO}{{{METER_ON}}})"
        f" or on ({REP}) {zero_per_replica()}",
        "== 0",
        "5m",
        "warning",
        "Replica {{ $labels.replica }} of {{ $labels.deployment }} reports no energy",
        "A replica with a live meter exported no joules for 5 minutes: its sampler is stuck or its meter "
        "fails (see accuwatt_meter_errors_total and /v1/energy).",
    ),
    Alert(
        "AccuwattEstimateOnGpuNode",
        f'max by ({REP}, NodeAddress) ({METER_INFO}{{source="estimate"}}) * on (NodeAddress) group_left () '
        '(sum by (NodeAddress) (ray_resources{Name="GPU"})'
        ' or on (NodeAddress) (0 * sum by (NodeAddress) (ray_resources{Name="CPU"})))',
        "> 0",
        "5m",
        "warning",
        "Replica {{ $labels.replica }} estimates energy on a GPU node",
        "The replica's energy source is `estimate` (CPU time x TDP) on node {{ $labels.NodeAddress }}, which "
        "has {{ $value }} GPU(s): NVML or RAPL should be readable there. Its tags are not measurements.",
    ),
    Alert(
        "AccuwattIdleEnergyDominates",
        f'{ENERGY_SHARE.record}{{share="idle"}}',
        "> 0.9",
        "30m",
        "info",
        "Idle energy dominates {{ $labels.deployment }}",
        "More than 90% of the deployment's metered energy over 5 minutes was idle (no request active) for "
        "30 minutes: the replicas are over-provisioned for the traffic.",
    ),
    Alert(
        "AccuwattMeterErrors",
        f"sum by ({REP}) {increase_since_zero(METER_ERRORS, SHARE_WINDOW)} or on ({REP}) {zero_per_replica()}",
        "> 0",
        "0m",
        "warning",
        "Energy meter of {{ $labels.replica }} fails",
        "{{ $value }} meter reads failed in 5 minutes; the replica's answers carry source `unavailable`.",
    ),
)


def recording_rules() -> dict[str, Any]:
    """The ``monitoring/rules/recording.yml`` document."""
    return {"groups": [{"name": "accuwatt-energy", "rules": [r.to_rule() for r in RECORDING]}]}


def alert_rules() -> dict[str, Any]:
    """The ``monitoring/rules/alerts.yml`` document."""
    return {"groups": [{"name": "accuwatt-alerts", "rules": [a.to_rule() for a in ALERTS]}]}
