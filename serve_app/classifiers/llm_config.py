"""Typed config of a zero-shot LLM classifier on vLLM, and the Ray resources it needs.

One replica of an LLM deployment owns ``tensor_parallel_size * pipeline_parallel_size`` workers.
:meth:`LLMSpec.serve_options` turns the spec into Ray Serve deployment options: a placement group
whose first bundle holds the replica actor and whose further bundles hold the vLLM workers (one GPU
each on GPU specs), so that the GPUs belong to the replica and the replica's energy meter can own them.

Pipeline stages across nodes (``pipeline_spans_nodes``): on GPUs, vLLM's Ray executor places the
workers in the replica's bundles. vLLM for CPU refuses the Ray executor, so on CPU the
multiprocessing executor runs in its multi-node mode, one node per stage: the replica runs stage 0
(``node_rank`` 0, its engine and its TP ranks), and every further stage is a headless executor in a
``llm_stages.PipelineStage`` actor in its own bundle; the bundles are ``STRICT_SPREAD``, so each stage
sits on a different Ray node.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from serve_app.classifiers.prompts import labels_alike
from serve_app.config_common import (
    DeploymentOptions,
    EnergyConfig,
    Strict,
    deployment_id,
    over_defaults,
    require_unique,
)
from serve_app.env import WORKER_ENV

Mode = Literal["paper", "choice", "score"]
MODES: tuple[str, ...] = ("paper", "choice", "score")
PlacementStrategy = Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"]

PREPARED_PREFIX = "prepared:"
"""``model: prepared:smollm2`` / ``prepared:tiny``: a directory built by ``accuwatt models prepare``."""

# Engine arguments that have typed fields here; ``engine_kwargs`` must not repeat them.
_TYPED_ENGINE_ARGS = frozenset(
    {
        "model",
        "tokenizer",
        "served_model_name",
        "dtype",
        "max_model_len",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "distributed_executor_backend",
        "enforce_eager",
        "seed",
    }
)


LLM_DEPLOYMENT: dict[str, Any] = {"num_cpus": 1.0, "max_ongoing_requests": 256}
"""An LLM's ``deployment`` defaults where they differ from `DeploymentOptions`' (kept under a partial
``deployment`` mapping: ``{num_replicas: 2}`` changes the replicas only)."""


class LLMSpec(Strict):
    """A zero-shot classifier: an instruct LLM served by vLLM, prompted with the study's DSPy prompt."""

    kind: Literal["llm"] = "llm"
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    deployment: DeploymentOptions = DeploymentOptions.model_validate(LLM_DEPLOYMENT)
    """The replica actor: one logical CPU for the engine's front end and 256 requests in flight (the
    engine batches them) by default, also under a mapping that sets other fields only; GPUs come from
    the workers."""
    energy: EnergyConfig = EnergyConfig.model_validate({"attribution": "tokens"})

    # Model and engine
    model: str
    """A local HF directory, a hub id (where the hub is reachable) or ``prepared:<name>``."""
    tokenizer: str | None = None
    served_model_name: str | None = None
    """Name reported in ``/v1/models`` details (default: ``model``)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = Field(None, ge=64)
    """Context length in tokens (prompt + generation); None: the model's own."""
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = None
    """None: ``ray`` on GPU specs with more than one worker, ``mp`` on CPU ones, vLLM's choice otherwise.
    ``uni`` (the model in the engine core's process) is for GPUs: vLLM for CPU runs ``mp`` whatever is
    asked, so a CPU spec refuses it."""
    placement_strategy: PlacementStrategy | None = None
    """None: ``STRICT_PACK`` (one node) unless pipeline stages span nodes (then ``PACK``)."""
    pipeline_spans_nodes: bool = False
    """Pipeline stages may sit on different nodes (the two-node experiment); on CPU each stage *must*
    sit on its own node (see the module doc)."""
    remote_stage_env: dict[str, str] = Field(default_factory=dict)
    """CPU stages on other nodes: environment overrides beside ``env_vars`` (e.g. their own
    ``VLLM_CPU_OMP_THREADS_BIND`` when the nodes share a machine)."""
    gpus_per_worker: float = Field(1.0, ge=0)
    """GPUs per vLLM worker (rank); 0 makes a CPU-only spec (vLLM for CPU)."""
    cpus_per_worker: float = Field(1.0, ge=0)
    """Logical CPUs reserved per worker bundle (beside the replica's ``deployment.num_cpus``)."""
    enforce_eager: bool = False
    seed: int = 0
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further ``vllm.AsyncEngineArgs`` fields, passed through (e.g. ``gpu_memory_utilization``)."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Environment of the replica and its engine processes (e.g. ``VLLM_CPU_KVCACHE_SPACE``); wins over
    ``deployment.env_vars`` and accuwatt's defaults (:meth:`engine_env`)."""
    hf_hub_offline: bool = True
    """``HF_HUB_OFFLINE`` in the replica and its engine: ``1`` (models must be local or already cached)
    or, when false, ``0`` (the hub is asked; overrides an ``HF_HUB_OFFLINE`` the node has). An
    ``HF_HUB_OFFLINE`` in ``deployment.env_vars`` or ``env_vars`` wins over this."""

    # Classification
    labels: list[str] = Field(min_length=1)
    default_mode: Mode = "choice"
    paper_max_tokens: int = Field(256, ge=1)
    """``paper`` mode: generation limit in tokens for the answer (after any thinking)."""
    reasoning: bool = False
    """An R1-style model that thinks in ``<think>...</think>`` before answering."""
    reasoning_budget_tokens: int = Field(1024, ge=0)
    """``paper`` mode, reasoning models: thinking limit in tokens; then ``</think>`` is forced. Capped
    per text so that the prompt, the thought, its close and ``paper_max_tokens`` fit ``max_model_len``."""
    label_bias: dict[str, float] = Field(default_factory=dict)
    """``score`` mode: added to each label's log-probability (nats) before the argmax."""
    align_prefix: bool = False
    """End the system message with blank lines (one space each, at most two blocks' worth) so that
    the tokens every prompt shares fill whole KV-cache blocks: a prefix cache keeps whole blocks only,
    and the shared prefix's last partial block is otherwise computed again for every text. Changes
    the study's prompt by that whitespace; ``/v1/models`` shows ``shared_prefix_tokens`` and
    ``prefix_pad_tokens``. Nothing is added without a prefix cache (``enable_prefix_caching``)."""
    warm_up: bool = True
    """Before the replica reports ready, classify one short text in each mode (``paper`` cut to two
    tokens), so that no request pays the engine's first-call costs and the instruction's whole cache
    blocks are cached for the first request as for every later one (``LLMClassifier.warm_up``; other
    kinds always classify one short text)."""

    @field_validator("id")
    @classmethod
    def _deployment_id(cls, value: str) -> str:
        return deployment_id(value)

    @field_validator("deployment", mode="before")
    @classmethod
    def _deployment_defaults(cls, value: Any) -> Any:
        """A ``deployment`` mapping keeps the LLM defaults it does not set (`LLM_DEPLOYMENT`)."""
        return over_defaults(value, LLM_DEPLOYMENT)

    @field_validator("energy", mode="before")
    @classmethod
    def _tokens_by_default(cls, value: Any) -> Any:
        """An ``energy`` mapping without ``attribution`` keeps the LLM default (tokens), not ``texts``."""
        if isinstance(value, dict) and "attribution" not in value:
            return {**value, "attribution": "tokens"}
        return value

    @field_validator("labels")
    @classmethod
    def _labels_ok(cls, labels: list[str]) -> list[str]:
        if any(not label.strip() or label != label.strip() for label in labels):
            raise ValueError("labels must be non-empty and carry no surrounding whitespace")
        require_unique("labels", labels)
        alike = labels_alike(labels)
        if alike:
            why = "an LLM's answer is read ignoring both and cannot tell them apart: rename or merge them"
            raise ValueError(f"labels must not differ only in case (or Unicode composition): {alike}; {why}")
        return labels

    @model_validator(mode="after")
    def _consistent(self) -> LLMSpec:
        unknown = sorted(set(self.label_bias) - set(self.labels))
        if unknown:
            raise ValueError(f"label_bias names labels not in labels: {unknown}")
        clash = sorted(set(self.engine_kwargs) & _TYPED_ENGINE_ARGS)
        if clash:
            raise ValueError(f"engine_kwargs repeats typed fields, set them directly: {clash}")
        if "worker_extension_cls" in self.engine_kwargs:
            raise ValueError(
                "engine_kwargs.worker_extension_cls is taken: accuwatt's worker extension reports "
                "each worker's node and GPU so that energy tags cover them"
            )
        if self.deployment.num_gpus:
            raise ValueError("deployment.num_gpus must be 0 for LLMs: GPUs come from gpus_per_worker")
        if self.world_size > 1 and self.distributed_executor_backend == "uni":
            raise ValueError("distributed_executor_backend 'uni' runs one worker; TP*PP > 1 needs mp or ray")
        if not self.on_gpu and self.distributed_executor_backend == "ray":
            raise ValueError("vLLM for CPU refuses the ray executor; use mp")
        if not self.on_gpu and self.distributed_executor_backend == "uni":
            # vllm/platforms/cpu.py turns it into mp (OMP needs the worker process): asked for uni, the
            # engine would run another executor than the spec and /v1/models said
            raise ValueError(
                "vLLM for CPU runs the model in a worker process (it turns uni into mp); use mp or leave "
                "distributed_executor_backend unset"
            )
        if self.pipeline_spans_nodes and self.pipeline_parallel_size < 2:
            raise ValueError("pipeline_spans_nodes needs pipeline_parallel_size >= 2")
        if self.on_gpu and self.pipeline_spans_nodes and self.executor_backend != "ray":
            raise ValueError(
                "pipeline stages across nodes on GPUs need the ray executor (mp runs every rank locally)"
            )
        if self.remote_stage_env and self.stage_nodes == 1:
            raise ValueError("remote_stage_env applies to CPU pipeline stages across nodes only")
        if self.stage_nodes > 1 and self.placement_strategy not in (None, "STRICT_SPREAD"):
            raise ValueError("CPU pipeline stages across nodes need STRICT_SPREAD (one node per stage)")
        if (
            not self.on_gpu
            and self.world_size > 1
            and self.stage_nodes == 1
            and self.placement_strategy in ("SPREAD", "STRICT_SPREAD")
        ):
            raise ValueError(
                f"placement_strategy {self.placement_strategy} on CPU: vLLM for CPU runs every rank as "
                "a child process of the replica, on its node, so their bundles must not spread to other "
                "nodes (STRICT_SPREAD cannot even be placed on one node); use PACK or STRICT_PACK, or "
                "pipeline_spans_nodes: true to put pipeline stages on other nodes"
            )
        if self.placement_strategy == "STRICT_SPREAD" and self.tensor_parallel_size > 1 and self.on_gpu:
            raise ValueError("STRICT_SPREAD would split tensor-parallel ranks across nodes")
        if self.pipeline_spans_nodes and self.placement_strategy == "STRICT_PACK":
            raise ValueError("STRICT_PACK keeps every stage on one node; drop pipeline_spans_nodes")
        if self.on_gpu and self.world_size > 1 and self.gpus_per_worker != 1:
            raise ValueError(
                "gpus_per_worker must be 1 when TP*PP > 1: vLLM gives each rank one whole GPU (more is "
                "refused, a fraction leaves its workers unschedulable or ranks sharing a GPU)"
            )
        if not self.on_gpu and self.pipeline_parallel_size > 1 and self.enforce_eager:
            raise ValueError(
                "vLLM for CPU fails at the first step of a pipeline run eager: keep compilation on "
                "(enforce_eager: false) for pipeline_parallel_size > 1"
            )
        if self.world_size > 1 and self.deployment.num_cpus <= 0:
            raise ValueError("deployment.num_cpus must be > 0 (it is the replica's placement bundle)")
        return self

    @property
    def world_size(self) -> int:
        """Workers (ranks) one replica runs: TP * PP."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def stage_nodes(self) -> int:
        """Nodes of vLLM's multiprocessing multi-node mode (``nnodes``): one per pipeline stage for CPU
        stages across nodes, else 1 (on GPUs the Ray executor places the stages)."""
        return self.pipeline_parallel_size if self.pipeline_spans_nodes and not self.on_gpu else 1

    @property
    def gpus_per_replica(self) -> float:
        return self.gpus_per_worker * self.world_size

    @property
    def executor_backend(self) -> str | None:
        """The executor actually requested from vLLM (see ``distributed_executor_backend``)."""
        if self.distributed_executor_backend is not None:
            return self.distributed_executor_backend
        if self.world_size > 1:
            return "ray" if self.on_gpu else "mp"
        return None

    @property
    def workers_are_actors(self) -> bool:
        """vLLM's workers are Ray actors in their own placement bundles (the ray executor); otherwise
        they are processes under the replica (``uni``: the engine core; ``mp``: its children)."""
        return self.executor_backend == "ray"

    def engine_env(self) -> dict[str, str]:
        """The whole environment accuwatt gives the replica and its engine processes, each layer winning
        over the ones before: accuwatt's defaults (``env.WORKER_ENV``, ``HF_HUB_OFFLINE`` from
        ``hf_hub_offline``, vLLM for CPU's cache and reserved CPUs), then ``deployment.env_vars``, then
        ``env_vars``. The replica's ``runtime_env`` is this (:meth:`serve_options`), and
        ``build_llm_classifier`` sets it while the engine starts (scripts and tests)."""
        env = {**WORKER_ENV, "HF_HUB_OFFLINE": "1" if self.hf_hub_offline else "0"}
        if not self.on_gpu:
            env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
        return {**env, **self.deployment.env_vars, **self.env_vars}

    def placement(self) -> tuple[list[dict[str, float]], PlacementStrategy] | None:
        """The replica's placement group: bundles and strategy; None when the replica's own actor
        resources suffice (one CPU worker, which runs inside the replica's engine process)."""
        if not self.on_gpu and self.world_size == 1:
            return None
        # The replica actor's own resources (custom ones included) must fit in the first bundle.
        replica = {"CPU": self.deployment.num_cpus, **self.deployment.resources}
        if self.stage_nodes > 1:
            # CPU stages across nodes: stage 0's ranks are the replica's children (its bundle); each
            # further stage is an actor with its ranks as children, in a bundle on another node.
            stage_cpus = self.cpus_per_worker * self.tensor_parallel_size
            bundles = [{**replica, "CPU": replica["CPU"] + stage_cpus}]
            bundles += [{"CPU": stage_cpus} for _ in range(self.stage_nodes - 1)]
            return [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.01} for b in bundles], "STRICT_SPREAD"
        if self.on_gpu and not self.workers_are_actors:
            # Every worker is a child process of the replica (the engine core, or the mp executor's
            # workers): they see the GPUs Ray gives the replica, so the replica holds them all.
            bundles = [{**replica, "GPU": self.gpus_per_replica}]
        else:
            worker: dict[str, float] = {"CPU": self.cpus_per_worker}
            if self.on_gpu:
                worker["GPU"] = self.gpus_per_worker
            bundles = [replica] + [dict(worker) for _ in range(self.world_size)]
        bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.01} for b in bundles]
        strategy = self.placement_strategy or ("PACK" if self.pipeline_spans_nodes else "STRICT_PACK")
        return bundles, strategy

    @property
    def artifact(self) -> None:
        """Zero-shot: no trained artifact."""
        return None

    def serve_options(self) -> dict[str, Any]:
        """Ray Serve deployment options beyond ``deployment`` (merge them into ``@serve.deployment``).

        Keys: ``ray_actor_options`` (``num_cpus``, ``num_gpus`` and ``runtime_env.env_vars``:
        :meth:`engine_env`, the deployment's ``env_vars`` included), and, when workers need their own
        resources, ``placement_group_bundles`` and ``placement_group_strategy``.
        """
        env = self.engine_env()
        pg = self.placement()
        num_gpus = self.gpus_per_replica if self.on_gpu and not self.workers_are_actors else 0.0
        # CPU stages across nodes: stage 0's ranks are the replica's children, so it holds their CPUs.
        stage0_cpus = self.cpus_per_worker * self.tensor_parallel_size if self.stage_nodes > 1 else 0.0
        actor: dict[str, Any] = {
            "num_cpus": self.deployment.num_cpus + stage0_cpus,
            "num_gpus": num_gpus,
            "runtime_env": {"env_vars": env},
        }
        if self.deployment.resources:
            actor["resources"] = dict(self.deployment.resources)
        options: dict[str, Any] = {"ray_actor_options": actor}
        if pg is not None:
            options["placement_group_bundles"], options["placement_group_strategy"] = pg
        return options
