"""Config pieces shared by every classifier kind (kept apart so that kind-specific modules import them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)


def require_unique(what: str, items: Sequence[str]) -> None:
    """A config error naming the repeated ``items`` (a validator's message)."""
    repeated = sorted({i for i in items if items.count(i) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique, repeated: {repeated}")


def deployment_id(value: str) -> str:
    """A classifier id, which is its Serve deployment's name (a validator's check). Ray titles a replica's
    process ``ray::ServeReplica:<app>:<deployment>`` and adds ``.<method>`` while a method runs, so an id
    whose last dot is followed by a Python name (``phi3.mini``) reads, while idle, as the deployment
    ``phi3`` running ``mini``: the node account would see the replica change deployment (and ``router.v2``
    change kind) from tick to tick. Such ids are refused; ``-``, or a dot before a digit (``qwen-2.5-7b``),
    are fine."""
    _, dot, tail = value.rpartition(".")
    if dot and tail.isidentifier():
        raise ValueError(
            f"id {value!r}: a '.' followed by a name reads as a method in Ray's process titles; "
            f"use '-' instead ({value.replace('.', '-')!r})"
        )
    return value


RESOURCE_UNIT = 0.0001
"""The smallest fraction of a resource Ray schedules: a smaller non-zero ask is refused by Ray."""


def ray_quantity(name: str, value: float) -> float:
    """A resource quantity Ray accepts in an actor's options (a validator's check): not a non-zero
    fraction below `RESOURCE_UNIT` (negative ones are refused by the fields' bounds)."""
    if value < 0:
        raise ValueError(f"{name} cannot be negative, got {value:g}")
    if 0 < value < RESOURCE_UNIT:
        raise ValueError(f"{name} {value:g}: Ray schedules resources in steps of {RESOURCE_UNIT:g}")
    return value


def ray_resources(resources: dict[str, float], instead: str = "num_cpus and num_gpus") -> dict[str, float]:
    """Custom Ray resources Ray accepts in an actor's options (a validator's check): no ``CPU`` or
    ``GPU`` (those are ``instead``), no negative or too fine quantities."""
    taken = sorted({"CPU", "GPU"} & set(resources))
    if taken:
        raise ValueError(f"{taken} cannot be custom resources: set {instead} instead")
    for name, value in resources.items():
        ray_quantity(f"resource {name!r}", value)
    return resources


def _field_quantity(value: float, info: ValidationInfo) -> float:
    return ray_quantity(str(info.field_name), value)


RayQuantity = Annotated[float, Field(ge=0), AfterValidator(_field_quantity)]
"""A field of CPUs or GPUs for Ray's options (`ray_quantity`, named by the field)."""
RayResources = Annotated[dict[str, float], AfterValidator(ray_resources)]
"""A field of custom Ray resources (`ray_resources`)."""


def over_defaults(value: Any, defaults: Mapping[str, Any]) -> Any:
    """A config mapping laid over a kind's own ``defaults`` (a before-validator's value): a partial
    ``deployment`` keeps the defaults it does not set. Anything else (a model, a wrong type) as it is."""
    if isinstance(value, Mapping):
        return {**defaults, **value}
    return value


class Strict(BaseModel):
    """Config: unknown keys refused, values frozen, and no float may be infinite or NaN (``.inf`` in a
    YAML would pass ``gt=0`` and turn a tag's joules into null)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EnergyConfig(Strict):
    """How a replica meters and attributes energy. Units in names."""

    meter: Literal["auto", "nvml", "rapl", "estimate", "off"] = "auto"
    """``auto`` probes nvml (if the replica owns GPUs), then rapl, then falls back to ``estimate``.
    ``off`` disables metering (tags say ``source: "off"``); it exists for overhead benchmarks."""
    sample_period_s: float = Field(0.05, gt=0, le=10)
    """How often the replica's meter is read while a request weighted step by step is open (an LLM under
    ``tokens``); otherwise once a second, as a split over constant sharers needs no reads in between
    (``energy/sampler.py``). A meter integrating power readings (``nvml-power``) is read this often
    throughout."""
    attribution: Literal["time", "texts", "tokens"] = "texts"
    """How an interval's energy is split among the requests active in it: equally (``time``), in
    proportion to their number of texts (``texts``), or to their token counts (``tokens``, LLMs)."""
    cpu_tdp_w: float = Field(65.0, gt=0)
    """``estimate``: the CPU package's thermal design power; per-core power = TDP / ``cpu_cores``."""
    cpu_cores: int | None = Field(None, gt=0)
    """``estimate``: logical cores the TDP is spread over (default: the machine's count)."""
    dram_w_per_gb: float = Field(0.375, ge=0)
    """``estimate`` and ``rapl`` without a DRAM domain: W per GB of resident memory (CodeCarbon's figure)."""
    rapl_root: str = "/sys/class/powercap"
    include_children: bool = True
    """``estimate``: count the CPU time of the replica's child processes (vLLM's engine core and workers)."""
    nvml_power_fallback: bool = True
    """``nvml``: integrate power readings for GPUs without a total-energy counter (labelled ``nvml-power``)."""
    node_account: bool = True
    """Meter through the node's energy account (``energy/account.py``: each node counter read once, split
    to process groups; serving overhead included). Off: the replica meters its own process tree (the
    pre-account design, kept for overhead benchmarks and replicas whose work spans nodes)."""
    account_period_s: float = Field(1.0, gt=0, le=10)
    """How often the node account splits its counters to processes (s): reading every process's CPU time
    costs CPU, so it runs coarser than the per-request split (see ``energy/share.py``)."""
    codecarbon: bool = False
    """Run CodeCarbon on every node beside the node account (``energy/crosscheck.py``): ``/v1/energy``
    then shows, per node, CodeCarbon's energy next to the account's over the same window (needs the
    ``carbon`` extra)."""
    idle_w: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    """The node's baseline idle power (W) per counter key or domain (``{"cpu": 12}``); unset: the lowest
    sustained power the account has seen (0 for the estimate's CPU counter)."""


class BatchingOptions(Strict):
    """Serve's dynamic batching of a ``batched`` classifier's replica (``@serve.batch``). It reaches the
    replica as its deployment's ``user_config`` (``app.py``), which Serve hands to the replica's
    ``reconfigure`` after the constructor and again whenever it changes: a new value keeps the replica."""

    max_batch_size: int = Field(32, ge=1)
    """Requests (not texts) merged into one model call; at most ``max_ongoing_requests`` are ever
    in the replica, so a larger value is never reached (Serve warns)."""
    batch_wait_timeout_s: float = Field(0.005, ge=0)

    @classmethod
    def from_user_config(cls, user_config: Any) -> BatchingOptions:
        """The settings in a deployment's ``user_config`` (a key it leaves out keeps its default). One
        set in a Serve config file's ``deployments:`` list can hold anything: unknown keys and bad
        values raise a ValueError naming them."""
        try:
            return cls.model_validate(user_config)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'user_config'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(
                f"user_config {user_config!r} refused ({problems}); a classifier's user_config takes "
                f"{' and '.join(cls.model_fields)} only"
            ) from None


class DeploymentOptions(BatchingOptions):
    """Ray Serve deployment settings of one classifier (the batching ones from `BatchingOptions`)."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: RayQuantity = 0.25
    num_gpus: RayQuantity = 0
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = Field(256, ge=-1)
    """Requests waiting for the replica beyond ``max_ongoing_requests``; -1: no limit (0 is refused, as
    Serve does)."""
    resources: RayResources = Field(default_factory=dict)
    """Custom Ray resources, e.g. ``{"node:worker-1": 0.01}`` to pin a replica to a node."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    health_check_period_s: float = Field(10.0, gt=0)
    """How often Serve checks the replica (s): a replica whose classifier can no longer answer (an LLM
    engine or a pipeline's feature stage died) is replaced."""
    health_check_timeout_s: float = Field(30.0, gt=0)
    """How long Serve waits for a health check before it counts as failed (s)."""

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_bound(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (no limit) or at least 1; Serve refuses 0")
        return v

    @property
    def batching(self) -> BatchingOptions:
        """The batching settings alone (the deployment's ``user_config``)."""
        return BatchingOptions.model_validate(self.model_dump(include=set(BatchingOptions.model_fields)))
