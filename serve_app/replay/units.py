"""Units other studies publish, and CEGI as its paper defines it (pure functions over records).

Comparable units (all from the per-request energy tags, i.e. the energy the service attributed to the
requests; idle energy is excluded):

- ``j_per_request``: J per HTTP request (a request holds ``batch_size`` texts; 1 in the study protocol).
- ``j_per_prompt_token`` / ``j_per_output_token``: J per prompt (input) token and per generated (output)
  token, over the requests whose answers carry token counts (LLMs only; n/a for traditional models).
  The whole request energy is divided by each count (prefill and decode are not split), as a
  "per input token" and a "per output token" figure each covering all the energy.
- **Steady-state window** (``steady_*``, after ML.ENERGY's J/output token from a steady-state window):
  per replay session, the span from the first request sent to the last answer, minus its first and
  last ``STEADY_TRIM_FRACTION`` (the ramp-up while the load fills and the tail while it drains); the
  requests sent and answered inside it form the window. ``steady_j_per_output_token`` = their energy /
  their generated tokens, ``steady_j_per_request`` = their energy / their count. ``None`` when fewer
  than ``STEADY_MIN_REQUESTS`` requests fall inside.
- ``wh_per_1k`` (``RunMetrics``): Wh per 1,000 queries (classified texts), the AI Energy Score unit.
- ``energy_scope``: the hardware the figures cover, from the tags' domains (``GPU only``,
  ``CPU+DRAM``, ``GPU+CPU+DRAM``, ...), and the software: ``model`` (the classifier's replica with
  in-replica serving: batching, tokenisation, engine workers) or ``model+serving`` (plus the router's
  and the HTTP proxy's share, the tags' ``overhead_j``), from the tags' ``scope``; mixed when only some
  tags carry the overhead. The source (``nvml``/``rapl``/``estimate``) is ``RunMetrics.energy_source``.

CEGI (Carbon Efficient Gain Index, "CEGI: Measuring the trade-off between efficiency and carbon
emissions for SLMs and VLMs", 2024): carbon per percentage point of accuracy gained per million
TRAINABLE parameters, ``cegi = co2e_g / (gain_pp * trainable_parameters / 1e6)`` in g CO2e / (pp x M
params); lower is better. ``gain_pp`` is the gain over the majority-class baseline of the TRAINING
split (never the test labels). Trainable parameters are what training fitted: a logistic regression's
weights and intercepts, an XGBoost model's tree nodes; a frozen sentence encoder is not counted. A
zero-shot LLM has none, so its CEGI is n/a. ``cegi_all_parameters`` is the variant accuwatt reported
before: the same ratio over ALL the model's parameters (frozen encoder and LLM weights included); it is
not the paper's index.
"""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.replay.records import Record

STEADY_TRIM_FRACTION = 0.1
STEADY_MIN_REQUESTS = 5
_DOMAIN_NAMES = {"gpu": "GPU", "cpu": "CPU", "dram": "DRAM"}


def energy_scope(domains: Sequence[str], scopes: Sequence[str] = ()) -> str:
    """What a figure covers: the hardware from the domains its tags carry (``GPU only``,
    ``CPU+DRAM``...), then the software from the tags' ``scope`` (``model`` or ``model+serving``)."""
    names = [_DOMAIN_NAMES[d] for d in ("gpu", "cpu", "dram") if d in domains]
    names += sorted(d for d in domains if d not in _DOMAIN_NAMES)
    if not names:
        return "unknown"
    hardware = "GPU only" if names == ["GPU"] else "+".join(names)
    return f"{hardware}, {software_scope(scopes)}"


def software_scope(scopes: Sequence[str]) -> str:
    """``model+serving`` when every tag includes the serving overhead, ``model`` when none does."""
    serving = sum(1 for s in scopes if s == "model+serving")
    if scopes and serving == len(scopes):
        return "model+serving"
    if serving == 0:
        return "model"
    return f"model (+serving on {serving} of {len(scopes)} requests)"


def _joules(r: Record) -> float | None:
    return r.energy.joules if r.ok and r.energy is not None else None


def _tokens(values: list[int | None] | None) -> int | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def per_token(records: Sequence[Record], which: str) -> float | None:
    """J per ``prompt`` or ``output`` token over the requests with both an energy figure and counts; a
    count of 0 (an answer with no generated token) is a count: its request's energy stays in."""
    energy_j, tokens = 0.0, 0
    for r in records:
        j = _joules(r)
        n = _tokens(r.prompt_tokens if which == "prompt" else r.generated_tokens)
        if j is not None and n is not None:
            energy_j, tokens = energy_j + j, tokens + n
    return energy_j / tokens if tokens else None


def steady_window(records: Sequence[Record]) -> list[Record]:
    """The requests sent and answered inside each session's trimmed span (see the module doc)."""
    by_session: dict[str, list[Record]] = {}
    for r in records:
        by_session.setdefault(r.session, []).append(r)
    inside: list[Record] = []
    for rs in by_session.values():
        t0, t1 = min(r.sent_unix_s for r in rs), max(r.done_unix_s for r in rs)
        trim = STEADY_TRIM_FRACTION * (t1 - t0)
        lo, hi = t0 + trim, t1 - trim
        inside.extend(r for r in rs if r.sent_unix_s >= lo and r.done_unix_s <= hi)
    return inside


def steady_figures(records: Sequence[Record]) -> dict[str, float | int | None]:
    """``steady_requests``, ``steady_window_s`` (summed over sessions), ``steady_j_per_request``,
    ``steady_j_per_output_token``."""
    window = [r for r in steady_window(records) if _joules(r) is not None]
    by_session: dict[str, list[Record]] = {}
    for r in window:
        by_session.setdefault(r.session, []).append(r)
    span_s = sum(
        max(r.done_unix_s for r in rs) - min(r.sent_unix_s for r in rs) for rs in by_session.values()
    )
    if len(window) < STEADY_MIN_REQUESTS:
        return {
            "steady_requests": len(window),
            "steady_window_s": span_s if window else None,
            "steady_j_per_request": None,
            "steady_j_per_output_token": None,
        }
    energy_j = sum(_joules(r) or 0.0 for r in window)
    return {
        "steady_requests": len(window),
        "steady_window_s": span_s,
        "steady_j_per_request": energy_j / len(window),
        "steady_j_per_output_token": per_token(window, "output"),
    }


def cegi(
    co2e_g: float | None, gain_pp: float | None, trainable_parameters: int | None
) -> tuple[float | None, str | None]:
    """The paper's CEGI and, when it is n/a, why (pure)."""
    if trainable_parameters == 0:
        return None, "no trainable parameters (zero-shot)"
    if trainable_parameters is None:
        return None, "trainable parameters unknown"
    if gain_pp is None:
        return None, "training split's majority class unknown"
    if gain_pp <= 0:
        return None, "no gain over the training majority class"
    if co2e_g is None:
        return None, "no energy or grid intensity"
    return co2e_g / (gain_pp * trainable_parameters / 1e6), None
