"""The energy tag a response carries, built from a ledger `Allocation`."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.energy.base import MEASURED_SOURCES, MeterInfo
from serve_app.energy.counters import MAX_POWER_W
from serve_app.energy.keys import joules_by_node, node_key, node_of_key
from serve_app.energy.ledger import Allocation
from serve_app.wire import Attribution, EnergyTag, TokenWork

EXCEEDS = "uncertainty_exceeds_value"


@dataclass(frozen=True)
class Overhead:
    """One request's serving overhead. Units: J."""

    joules: float
    domains_j: dict[str, float]
    source: str
    node: str = ""
    flags: tuple[str, ...] = ()
    uncertainty_j: float | None = None
    stretch_starts: int = 0
    """1 when the request began a busy stretch in the router's ledger (see ``Attribution``)."""
    edge_uncertainty_j: float | None = None
    """Before the physical cap (``EnergyTag.edge_uncertainty_j``)."""
    window_s: float | None = None
    """The router's window (s): it encloses the replica's (the router opens it before it calls the
    replica and closes it after the answer came back, ``router.classify``)."""
    span_s: float | None = None
    """The time whose energy the router's figure can hold (s, ``EnergyTag.span_s``)."""

    @classmethod
    def of_tag(cls, tag: EnergyTag, node: str, flags: tuple[str, ...] = ()) -> Overhead:
        """The router's share of one request from its window's tag (``joules`` not None)."""
        return cls(
            tag.joules or 0.0,
            dict(tag.domains_j),
            tag.source,
            node,
            flags,
            tag.uncertainty_j,
            (tag.attribution.stretch_starts if tag.attribution else None) or 0,
            tag.edge_uncertainty_j,
            tag.attribution.window_s if tag.attribution else None,
            tag.span_s,
        )


def make_tag(
    alloc: Allocation,
    info: MeterInfo,
    rule: str,
    replica: str,
    tokens: tuple[int, int] | None = None,
    late: bool = False,
) -> EnergyTag:
    """``tokens``: (prompt, generated) tokens of a stepped request's texts, shown with its steps;
    ``late``: an end of the window did not wait for fresh remote counters (``info.lag_s`` counts)."""
    joules = alloc.joules
    window_s = max(alloc.duration_s, 0.0)
    flags: list[str] = list(alloc.flags)
    if window_s < info.update_period_s:
        flags.append("shorter_than_counter_update")
    if late:
        flags.append("remote_counters_late")
    avg_w = joules / window_s if window_s > 0 else 0.0
    # what can shift across the window's edges: an extrapolating meter's drift (its recent largest miss
    # over a period, at most twice within a window) and what it moved on top of its extrapolation in
    # the window, or else the average power x the counter's update period; plus a late remote lag. A
    # window shorter than the update period of a counter read as it is may have seen no update at all
    # (0 J while the device drew): its power is unknown, so the bound takes the most the device can draw
    edge_w = avg_w
    most_w = _counters_max_w(info)
    if window_s < info.update_period_s and info.missed_j is None:
        edge_w = max(avg_w, most_w or 0.0)
    edges = 2 * info.edge_error_j if info.edge_error_j is not None else edge_w * info.update_period_s
    late_j = avg_w * info.lag_s if late else 0.0
    edge_uncertainty = 2 * info.resolution_j + edges + alloc.adjusted_j + late_j
    # never wider than physics: the figure and the energy it stands for both lie between 0 and what the
    # devices can draw over the span the figure can cover (a 6 ms request on a 75 W node had said
    # ± 9.2 J, 20x that, from its share's largest miss over a whole account period)
    uncertainty = edge_uncertainty
    if most_w is not None:
        uncertainty = min(uncertainty, 2 * info.resolution_j + most_w * _span_s(window_s, info))
    if uncertainty > joules:
        flags.append(EXCEEDS)
    return EnergyTag(
        joules=joules,
        source=info.source,
        measured=info.source in MEASURED_SOURCES,
        domains_j=dict(alloc.domain_j),
        nodes_j=joules_by_node(alloc.energy_j, info.node),
        attribution=Attribution(
            rule=rule,
            weight=alloc.weight,
            window_s=window_s,
            intervals=alloc.intervals,
            max_sharers=alloc.max_sharers,
            tokens=_token_work(alloc, tokens),
            stretch_starts=int(alloc.opened_stretch),
        ),
        uncertainty_j=uncertainty,
        edge_uncertainty_j=edge_uncertainty,
        max_power_w=most_w,
        span_s=_span_s(window_s, info),
        flags=flags,
        replica=replica,
        nodes=sorted({node_of_key(k) or info.node for k in alloc.energy_j} - {""}),
        devices=list(info.devices),
        model_j=joules,
        scope="model",
    )


def _span_s(window_s: float, info: MeterInfo) -> float:
    """The time whose energy a window's figure can hold (s): the window itself for a meter that
    extrapolates between updates (an account share never moves faster than its devices can draw, so
    its figure over a window is at most their power x the window); plus one update period for a
    counter read as it is (its figure can hold energy drawn before the window); plus how old a remote
    node's values can be (their reads need not fall at the window's ends)."""
    as_read_s = info.update_period_s if info.missed_j is None else 0.0
    return window_s + as_read_s + info.lag_s


def _counters_max_w(info: MeterInfo) -> float | None:
    """The most the meter's counters can draw together (W), each counter once: the limit its meter
    states (``MeterInfo.max_power_w``: RAPL's, NVML's, the estimate's TDP), else its domain's bound
    (``counters.MAX_POWER_W``); None when the meter names no counter. Devices that are processes
    (``cpu-process:<pid>``) are not counters."""
    most = dict(info.max_power_w)
    for device in info.devices:
        node, _, key = device.split("=", 1)[0].rpartition("/")  # "worker-1/cpu:node", "gpu:0=GPU-..."
        domain = key.split(":", 1)[0]
        if domain in MAX_POWER_W:
            most.setdefault(node_key(key, node) if node else key, MAX_POWER_W[domain])
    return sum(most.values()) if most else None


def _token_work(alloc: Allocation, tokens: tuple[int, int] | None) -> TokenWork | None:
    steps = alloc.steps
    if steps is None:
        return None
    prompt, generated = tokens or (None, None)
    return TokenWork(
        prompt_tokens=prompt,
        generated_tokens=generated,
        prefill_tokens=steps.prefill_tokens,
        decode_tokens=steps.decode_tokens,
        prefill_j=steps.prefill_j,
        decode_j=steps.decode_j,
        unstepped_j=steps.unstepped_j,
    )


def add_overhead(tag: EnergyTag, overhead: Overhead | None) -> EnergyTag:
    """The tag end to end: ``joules`` = ``model_j`` + ``overhead_j`` (domains summed, uncertainties
    added) when both are known; otherwise the model's figure alone, flagged ``overhead_not_metered``.
    When the router's node is among the tag's (both shares of the same node's counters,
    ``max_power_w`` kept), the whole figure and the energy it stands for lie between 0 and
    ``max_power_w`` x the router's span (its window encloses the replica's, ``_joint_span_s``): the
    summed uncertainty is capped at that (or at the figure, were it larger), not at the sum of the two
    shares' own caps.
    An estimated overhead is never added to a measured figure (the sum would pass an estimate off as a
    measurement); a measured one is added whatever its counters: a GPU replica's share is labelled
    ``nvml`` (its GPUs with the node's RAPL CPU and DRAM counters, ``account.share_source``) and the
    router's, on the same RAPL counters, ``rapl``. The tag keeps its source (an estimate stays one)."""
    model = tag.joules
    if model is None:
        return tag
    if overhead is None or (tag.measured and overhead.source not in MEASURED_SOURCES):
        return tag.model_copy(update={"flags": [*tag.flags, "overhead_not_metered"]})
    domains = dict(tag.domains_j)
    for d, j in overhead.domains_j.items():
        domains[d] = domains.get(d, 0.0) + j
    nodes = dict(tag.nodes_j)
    nodes[overhead.node] = nodes.get(overhead.node, 0.0) + overhead.joules
    joules = model + overhead.joules
    flags = [f for f in tag.flags if f != EXCEEDS]
    uncertainty, edge = tag.uncertainty_j, tag.edge_uncertainty_j
    if uncertainty is not None and overhead.uncertainty_j is not None:
        uncertainty += overhead.uncertainty_j
    if edge is not None and overhead.edge_uncertainty_j is not None:
        edge += overhead.edge_uncertainty_j
    # the router's share is of its node's counters: the model's when that node is among the model's
    # (every counter of a node is in each of its shares), otherwise devices the tag does not know
    most_w = tag.max_power_w if not overhead.node or overhead.node in tag.nodes else None
    if uncertainty is not None and most_w is not None:
        span_s = _joint_span_s(tag, overhead)
        if span_s is not None:  # one cap for the whole figure, not the sum of the two shares' caps
            uncertainty = min(uncertainty, max(most_w * span_s, joules))
    if uncertainty is not None and uncertainty > joules:
        flags.append(EXCEEDS)
    attribution = tag.attribution
    if overhead.stretch_starts and attribution is not None and attribution.stretch_starts is not None:
        starts = attribution.stretch_starts + overhead.stretch_starts
        attribution = attribution.model_copy(update={"stretch_starts": starts})
    return tag.model_copy(
        update={
            "joules": joules,
            "uncertainty_j": uncertainty,
            "edge_uncertainty_j": edge,
            "max_power_w": most_w,
            "attribution": attribution,
            "model_j": model,
            "overhead_j": overhead.joules,
            "domains_j": domains,
            "nodes_j": nodes,
            "nodes": sorted(set(tag.nodes) | {overhead.node} - {""}),
            "scope": "model+serving",
            "flags": [*flags, *(f"overhead_{f}" for f in overhead.flags)],
        }
    )


def _joint_span_s(tag: EnergyTag, overhead: Overhead) -> float | None:
    """The time whose energy the end-to-end figure can hold (s) when both shares are of the same
    devices: the router's window encloses the replica's, so the union of what the two figures can hold
    is the router's window plus the longer of the two times a figure can hold before its window (a
    counter read as it is, a remote lag: ``EnergyTag.span_s`` - window). Where the durations do not
    show the enclosure (the replica's window the longer), the two spans are taken apart (their sum).
    None where either side does not say its span."""
    model_span, router_span, router_window = tag.span_s, overhead.span_s, overhead.window_s
    if tag.attribution is None or model_span is None or router_span is None or router_window is None:
        return None
    model_window = tag.attribution.window_s
    if model_window > router_window:
        return model_span + router_span
    return router_window + max(model_span - model_window, router_span - router_window, 0.0)


def single_hop_tag(tag: EnergyTag, proxy_included: bool) -> EnergyTag:
    """The tag of the single-hop layout (``router.layout: single_hop``): the router's checks and the
    classifier run in one process, so the replica's share is the request's cost end to end (with the
    HTTP proxy's part when the share comes from the node account, ``proxy_included``), and its model
    and serving parts cannot be told apart by process: ``model_j`` and ``overhead_j`` stay None,
    flagged ``single_hop``."""
    if tag.joules is None:
        return tag
    flags = [*tag.flags, "single_hop"] + ([] if proxy_included else ["proxy_not_metered"])
    return tag.model_copy(
        update={"model_j": None, "overhead_j": None, "scope": "model+serving", "flags": flags}
    )


def no_energy_tag(replica: str, info: MeterInfo, reason: str, source: str = "unavailable") -> EnergyTag:
    """A tag without a figure: the meter failed (``unavailable``) or metering is ``off``."""
    flag = f"meter_error: {reason[:200]}" if source == "unavailable" else reason
    return EnergyTag(
        joules=None,
        source=source,
        measured=False,
        domains_j={},
        nodes_j={},
        attribution=None,
        uncertainty_j=None,
        flags=[flag],
        replica=replica,
        nodes=[info.node] if info.node else [],
        devices=list(info.devices),
    )
