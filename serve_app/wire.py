"""What crosses a process or a file: one typed model per result, the same on both sides.

- `Prediction`: one text's answer, built by a classifier, sent by the replica and the router.
- `EnergyTag`: what one request cost, built in the classifier replica (``energy/tag.py``), completed
  by the router (serving overhead), sent in the HTTP answer and kept in every replay record.
- `ClassifyAnswer`: the body of ``POST /v1/classify`` (the router writes it, the replay driver and
  any client read it).
- `ModelDescription` / `ModelEntry`: what a replica says about its classifier (``describe()``), and a
  row of ``GET /v1/models`` (the router's state of the classifier plus that description; the replay
  reads it and keeps it in ``run.json``).
- `EnergyView` (`DeploymentEnergy`, `ReplicaEnergy`): the body of ``GET /v1/energy`` (the router
  writes it; the replay reads its deltas and keeps a deployment's part in ``run.json``).
- `WindowRecord`: one line of a run folder's ``windows.jsonl`` (the replay writes it, reports read it).
- `RunInfo`: a run folder's ``run.json`` (the replay writes it, results and reports read it).

Readers ignore fields they do not know (a newer service) and fill defaults for fields an older one did
not send. Lines in files carry ``schema_version`` (the version of their model). Units: J, s.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_CONFIG = ConfigDict(extra="ignore")


class Prediction(BaseModel):
    """One text's answer. ``scores`` (label -> score, finite: JSON has no infinity) and token counts
    are optional extras; ``parsed``: the label was read from the model's answer (False: a generative
    LLM's answer named no label and the fallback was used); ``raw``: a generative LLM's answer text."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)
    label: str
    scores: dict[str, float] | None = None
    prompt_tokens: int | None = None
    """A generative LLM's prompt of the text in its mode, counted once in every mode (a ``choice``
    asked again, a reasoning model's answer after its thought and ``score`` over label sequences give
    the engine that prompt again: not counted again; what the engine computed, prefix-cache hits
    excluded, is ``EnergyTag.attribution.tokens.prefill_tokens``)."""
    generated_tokens: int | None = None
    """Every token the engine generated for the text, over all its calls."""
    parsed: bool = True
    raw: str | None = None


class TokenWork(BaseModel):
    """An LLM request under the ``tokens`` rule: what the engine processed for it, and its energy by
    phase (see ``energy/ledger.py``). ``prompt_tokens`` / ``generated_tokens``: its texts' prompts and
    answers (``Prediction``'s, summed: each prompt once); ``prefill_tokens``: prompt tokens the engine computed (prefix-cache hits excluded);
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
    stretch_starts: int | None = None
    """In how many of the ledgers that split this request's energy (its replica's; the router's for
    the serving overhead) it began a busy stretch (no other request open). A run's uncertainty counts
    the stretches, not the requests: between back-to-back requests the edge errors cancel."""


class EnergyTag(BaseModel):
    """What one request cost. ``joules`` is None when the meter was unavailable (never a fake 0).

    ``uncertainty_j``: counter resolution at both ends of the window, plus the energy that could
    shift across its edges: for a node account share (a meter that extrapolates between ticks),
    twice its ``edge_error_j`` (the largest miss of its extrapolation over one tick period at its recent
    ticks) plus what the share moved on top of its extrapolation inside the window;
    for a counter read as it is, the average power over the window x the counter's update period;
    plus average power x the remote counters' polling lag when they were late; never more than the
    resolution plus what the meters' devices can draw over the window (plus one update period for a
    counter read as it is, and the remote lag for a replica spanning nodes). Flags: ``shorter_than_counter_update`` when the request is shorter than
    the counter's refresh period; ``remote_counters_late`` when another node's counters did not arrive
    in time at an end of the request (its remote work may count in the next request's window instead).
    ``meter_gap``: the meter failed and recovered while the request was open (the outage's energy is unknown: the figure lacks it).
    """

    model_config = _CONFIG
    joules: float | None = None
    source: str = "unavailable"
    measured: bool = False
    domains_j: dict[str, float] = Field(default_factory=dict)
    nodes_j: dict[str, float] = Field(default_factory=dict)
    attribution: Attribution | None = None
    uncertainty_j: float | None = None
    edge_uncertainty_j: float | None = None
    """What the meters' timing alone can shift across the window's edges (the sum ``uncertainty_j``
    describes, before it is capped at what the devices can draw over the window): a run's bound takes
    it once per busy stretch (``replay.summary.run_uncertainty_j``). None: as ``uncertainty_j``."""
    max_power_w: float | None = None
    """The most the metered devices behind ``joules`` can draw together (W; each counter once, as
    ``uncertainty_j``'s cap counts them): a run's ± is capped with it (``replay.summary``). None:
    unknown (an older replica, a tag without a figure, or a serving overhead metered on another node
    than the classifier's)."""
    span_s: float | None = None
    """The time whose energy the figure can hold (s): ``attribution.window_s``, plus one counter
    update period for a counter read as it is and the remote lag when late (``energy/tag._span_s``):
    ``uncertainty_j`` is at most ``max_power_w`` x this (plus the counters' resolution)."""
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


class ReplicaAnswer(BaseModel):
    """What a classifier replica answers the router for one request: one prediction per text, in order,
    and the replica's energy tag (the router adds the serving overhead). Across the Ray hop it travels
    as its JSON (``model_dump_json`` in the replica, ``model_validate_json`` in the router): typed at both
    ends, one pass each (a dict of dumped predictions, pickled, then validated again took 1.4x as long
    for 32 texts here)."""

    model_config = _CONFIG
    predictions: list[Prediction]
    energy: EnergyTag


class ClassifyAnswer(BaseModel):
    """The body of a 200 answer to ``POST /v1/classify``: one prediction per text, in order."""

    model_config = _CONFIG
    model: str
    request_id: str
    labels: list[str]
    predictions: list[Prediction]
    energy: EnergyTag
    latency_s: float
    """Inside the router: from reading the request to the answer."""
    replayed: bool = False
    """Answered from the idempotency cache (a repeated ``request_id``): not classified or metered again."""


class ModelDescription(BaseModel):
    """A classifier as its replica describes it: labels, devices, where its energy comes from
    (``energy_source``, ``energy_devices``, ``node``, ``energy_notes``), LLM ``modes``, parameter counts
    (``trainable_parameters``: what training fitted, 0 for a zero-shot LLM) and kind-specific details."""

    model_config = _CONFIG
    id: str
    kind: str | None = None
    labels: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    energy_source: str | None = None
    energy_devices: list[str] = Field(default_factory=list)
    node: str | None = None
    energy_notes: str | None = None
    modes: list[str] = Field(default_factory=list)
    parameters: int | None = None
    trainable_parameters: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ModelEntry(ModelDescription):
    """One row of ``GET /v1/models``: ``state`` (``loading``, ``ready``, ``failed``) with ``reason`` and
    Serve's ``serve_status``, since ``since_unix_s``; the description's fields once the classifier was
    ready (a row is written with the fields it has: a loading row has no ``labels``)."""

    state: str = "ready"
    reason: str | None = None
    serve_status: str | None = None
    since_unix_s: float | None = None


class ModelList(BaseModel):
    """The body of ``GET /v1/models``."""

    model_config = _CONFIG
    models: list[ModelEntry] = Field(default_factory=list)

    def entry(self, model_id: str) -> ModelEntry | None:
        return next((m for m in self.models if m.id == model_id), None)


WINDOW_SCHEMA = 1


class WindowRecord(BaseModel):
    """One replay window of a (model, split) in one session: when it ran, what it sent, what the
    model's replicas drew over it (``energy_delta``: the ``GET /v1/energy`` delta, see
    ``replay/window.py``; None when unknown) and CodeCarbon's figures (None when not run)."""

    model_config = _CONFIG
    schema_version: int = WINDOW_SCHEMA
    model: str
    split: str
    session: str
    start_unix_s: float
    end_unix_s: float
    sent: int
    skipped: int = 0
    energy_delta: dict[str, Any] | None = None
    codecarbon: dict[str, Any] | None = None

    def section(self, name: str, key: str) -> float | None:
        """A number from ``energy_delta`` or ``codecarbon``; None when absent."""
        part = getattr(self, name)
        value = part.get(key) if isinstance(part, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ReplicaEnergy(BaseModel):
    """One replica's row of ``GET /v1/energy``: its cumulative totals since it started
    (``metered_j = attributed_j + idle_j``; ``domains``: part -> domain -> J, parts ``metered``,
    ``attributed``, ``idle``, ``held``), ``stale`` when the replica no longer answers (its last
    report, kept). The other fields of the replica's snapshot (``energy/window.py``) pass through."""

    model_config = ConfigDict(extra="allow")
    source: str = "unavailable"
    node: str | None = None
    metered_j: float = 0.0
    attributed_j: float = 0.0
    idle_j: float = 0.0
    domains: dict[str, dict[str, float]] = Field(default_factory=dict)
    window_s: list[float] = Field(default_factory=list)
    requests: int = 0
    stale: bool = False
    error: str | None = None
    edge_error_j: float | None = None
    """An account share's recent largest miss over a tick period (``MeterInfo.edge_error_j``)."""
    missed_j: float | None = None
    """... its misses summed since the replica started (``MeterInfo.missed_j``)."""
    adjusted_j: float = 0.0
    """... what it moved on top of its extrapolation, cumulative (``Reading.adjusted_j``)."""
    max_power_w: dict[str, float] = Field(default_factory=dict)
    """Per counter, the most its device can draw (W, ``MeterInfo.max_power_w``): the share moves no faster."""


class DeploymentEnergy(BaseModel):
    """A classifier deployment in ``GET /v1/energy``: its replicas (live and stale) and their sums."""

    model_config = _CONFIG
    replicas: dict[str, ReplicaEnergy] = Field(default_factory=dict)
    metered_j: float = 0.0
    attributed_j: float = 0.0
    idle_j: float = 0.0

    @classmethod
    def of(cls, replicas: dict[str, ReplicaEnergy]) -> DeploymentEnergy:
        return cls(
            replicas=replicas,
            metered_j=sum(r.metered_j for r in replicas.values()),
            attributed_j=sum(r.attributed_j for r in replicas.values()),
            idle_j=sum(r.idle_j for r in replicas.values()),
        )


class EnergyView(BaseModel):
    """The body of ``GET /v1/energy``: per deployment, per node account (``energy/account.py``
    ``NodeAccount.snapshot``: metered, baseline idle, groups; each counter once) and the routers'
    serving overhead."""

    model_config = _CONFIG
    deployments: dict[str, DeploymentEnergy] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    serving_overhead: dict[str, Any] = Field(default_factory=dict)


RUN_SCHEMA = 1
"""The version of ``run.json``'s layout."""


class SplitInfo(BaseModel):
    """What ``run.json`` records to name a split exactly (``data.split_identity``) and its majority
    class in the training split (the gain baseline; None for a user's test file)."""

    model_config = ConfigDict(extra="allow")
    dataset: str | None = None
    fingerprint: str | None = None
    n_test: int | None = None
    """The split's test texts (None for a user's test file): what a whole run of it answers."""
    majority_label: str | None = None


class CarbonInfo(BaseModel):
    model_config = _CONFIG
    country: str | None = None
    g_per_kwh: float | None = None
    source: str | None = None


class Topology(BaseModel):
    """What served the run: the model's ``/v1/models`` row, GPUs, its ``/v1/energy`` part, the URL."""

    model_config = _CONFIG
    model: ModelEntry | None = None
    gpus: int = 0
    energy: DeploymentEnergy | None = None
    url: str | None = None


class Session(BaseModel):
    """One replay of the run folder (a resume adds one)."""

    model_config = _CONFIG
    session: str
    started_unix_s: float
    failed_moved_aside: int | None = None
    """``--retry-failed``: how many failed records this session moved to ``records.failed.jsonl`` to
    send their requests again (0: none had failed); None: not asked (an optional field: the layout,
    `RUN_SCHEMA`, is the same, and an older ``run.json`` reads as not asked)."""


class RunInfo(BaseModel):
    """A run folder's ``run.json``: one model on one dataset and topology, over its sessions."""

    model_config = _CONFIG
    schema_version: int = RUN_SCHEMA
    model: str
    dataset: str = "?"
    dataset_source: str | None = None
    fingerprint: str | None = None
    labels: list[str] = Field(default_factory=list)
    label_check: dict[str, Any] = Field(default_factory=dict)
    topology_name: str = "?"
    run: str = "?"
    config: dict[str, Any] = Field(default_factory=dict)
    splits: dict[str, SplitInfo] = Field(default_factory=dict)
    carbon: CarbonInfo = Field(default_factory=CarbonInfo)
    topology: Topology = Field(default_factory=Topology)
    versions: dict[str, Any] = Field(default_factory=dict)
    git_commit: str | None = None
    machine: dict[str, Any] = Field(default_factory=dict)
    created_unix_s: float = 0.0
    sessions: list[Session] = Field(default_factory=list)
