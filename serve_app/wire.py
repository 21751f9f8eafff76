"""What crosses a process or a file: one typed model per result, the same on both sides.

The energy tag is built in the classifier replica (``energy/tag.py``), completed by the router
(serving overhead), sent in the HTTP answer and kept in every replay record. Readers ignore fields
they do not know (a newer service) and fill defaults for fields an older one did not send. Units: J, s.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_CONFIG = ConfigDict(extra="ignore")


class TokenWork(BaseModel):
    """An LLM request under the ``tokens`` rule: what the engine processed for it, and its energy by
    phase (see ``energy/ledger.py``). ``prompt_tokens`` / ``generated_tokens``: its texts' prompts and
    answers; ``prefill_tokens``: prompt tokens the engine computed (prefix-cache hits excluded);
    ``decode_tokens``: decode steps (one token each). Each interval's energy went to the requests in it
    in proportion to these tokens; ``unstepped_j`` was split by ``weight`` (the prompt-token estimate)
    because no sharer reported an engine step in those intervals. Units: tokens, J."""

    model_config = _CONFIG
    prompt_tokens: int | None
    generated_tokens: int | None
    prefill_tokens: int
    decode_tokens: int
    prefill_j: float
    decode_j: float
    unstepped_j: float


class Attribution(BaseModel):
    model_config = _CONFIG
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

    model_config = _CONFIG
    joules: float | None = None
    source: str = "unavailable"
    measured: bool = False
    domains_j: dict[str, float] = Field(default_factory=dict)
    nodes_j: dict[str, float] = Field(default_factory=dict)
    attribution: Attribution | None = None
    uncertainty_j: float | None = None
    flags: list[str] = Field(default_factory=list)
    replica: str = ""
    nodes: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    model_j: float | None = None
    """The classifier replica's share (its process group on the node account, or its process tree)."""
    overhead_j: float | None = None
    """Serving overhead: the router's and the proxy's share for this request (None: not metered)."""
    scope: str = ""
    """What ``joules`` covers: ``model+serving`` when ``overhead_j`` is in it, else ``model``."""
