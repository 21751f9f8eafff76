"""The energy tag a response carries, built from a ledger `Allocation`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from serve_app.energy.base import MEASURED_SOURCES, MeterInfo
from serve_app.energy.keys import joules_by_node, node_of_key
from serve_app.energy.ledger import Allocation

if TYPE_CHECKING:
    from serve_app.energy.overhead import Overhead


class TokenWork(BaseModel):
    """An LLM request under the ``tokens`` rule: what the engine processed for it, and its energy by
    phase (see ``energy/ledger.py``). ``prompt_tokens`` / ``generated_tokens``: its texts' prompts and
    answers; ``prefill_tokens``: prompt tokens the engine computed (prefix-cache hits excluded);
    ``decode_tokens``: decode steps (one token each). Each interval's energy went to the requests in it
    in proportion to these tokens; ``unstepped_j`` was split by ``weight`` (the prompt-token estimate)
    because no sharer reported an engine step in those intervals. Units: tokens, J."""

    model_config = ConfigDict(extra="forbid")
    prompt_tokens: int | None
    generated_tokens: int | None
    prefill_tokens: int
    decode_tokens: int
    prefill_j: float
    decode_j: float
    unstepped_j: float


class Attribution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: str
    weight: float
    window_s: float
    intervals: int
    max_sharers: int
    tokens: TokenWork | None = None


class EnergyTag(BaseModel):
    """What one request cost. ``joules`` is None when the meter was unavailable (never a fake 0).

    ``uncertainty_j``: counter resolution at both ends of the window, plus the energy that could
    shift across a window edge because the counter refreshes only every ``update_period_s``
    (average power over the window x update period). Flags: ``shorter_than_counter_update`` when
    the request is shorter than the counter's refresh period.
    """

    model_config = ConfigDict(extra="forbid")
    joules: float | None
    source: str
    measured: bool
    domains_j: dict[str, float]
    nodes_j: dict[str, float]
    attribution: Attribution | None
    uncertainty_j: float | None
    flags: list[str]
    replica: str
    nodes: list[str]
    devices: list[str]
    model_j: float | None = None
    """The classifier replica's share (its process group on the node account, or its process tree)."""
    overhead_j: float | None = None
    """Serving overhead: the router's and the proxy's share for this request (None: not metered)."""
    scope: str = ""
    """What ``joules`` covers: ``model+serving`` when ``overhead_j`` is in it, else ``model``."""


def make_tag(
    alloc: Allocation, info: MeterInfo, rule: str, replica: str, tokens: tuple[int, int] | None = None
) -> EnergyTag:
    """``tokens``: (prompt, generated) tokens of a stepped request's texts, shown with its steps."""
    joules = alloc.joules
    window_s = max(alloc.duration_s, 0.0)
    flags: list[str] = list(alloc.flags)
    if window_s < info.update_period_s:
        flags.append("shorter_than_counter_update")
    avg_w = joules / window_s if window_s > 0 else 0.0
    uncertainty = 2 * info.resolution_j + avg_w * info.update_period_s
    if uncertainty > joules:
        flags.append("uncertainty_exceeds_value")
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
        ),
        uncertainty_j=uncertainty,
        flags=flags,
        replica=replica,
        nodes=sorted({node_of_key(k) or info.node for k in alloc.energy_j} - {""}),
        devices=list(info.devices),
        model_j=joules,
        scope="model",
    )


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


def add_overhead(energy: dict[str, Any], overhead: Overhead | None) -> dict[str, Any]:
    """The tag (as a dict) end to end: ``joules`` = ``model_j`` + ``overhead_j`` (domains summed) when
    both are known and have the same source; otherwise the model's figure alone, flagged
    ``overhead_not_metered`` (an estimated overhead is never added to a measured figure)."""
    out = dict(energy)
    model = out.get("joules")
    if not isinstance(model, float):
        return out
    if overhead is None or overhead.source != out.get("source"):
        out["flags"] = [*(out.get("flags") or []), "overhead_not_metered"]
        return out
    domains = dict(out.get("domains_j") or {})
    for d, j in overhead.domains_j.items():
        domains[d] = domains.get(d, 0.0) + j
    nodes = dict(out.get("nodes_j") or {})
    nodes[overhead.node] = nodes.get(overhead.node, 0.0) + overhead.joules
    out.update(
        joules=model + overhead.joules,
        model_j=model,
        overhead_j=overhead.joules,
        domains_j=domains,
        nodes_j=nodes,
        nodes=sorted(set(out.get("nodes") or []) | {overhead.node} - {""}),
        scope="model+serving",
        flags=[*(out.get("flags") or []), *(f"overhead_{f}" for f in overhead.flags)],
    )
    return out


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
