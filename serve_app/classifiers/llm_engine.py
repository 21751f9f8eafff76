"""Starting and stopping a vLLM engine for an LLM classifier: engine arguments from the spec, the
environment the engine's processes inherit, and the processes it leaves (they can ignore SIGTERM)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from serve_app.classifiers.llm_config import LLMSpec
from serve_app.classifiers.llm_workers import WORKER_EXTENSION
from serve_app.energy.footprint import descendant_pids


def child_pids() -> set[int]:
    """This process's descendants, less multiprocessing's resource tracker: the engine's start may
    launch it, but it serves the whole process and must outlive the engine."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    return descendant_pids() - {os.getpid(), tracker}


def kill_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """Terminate, then kill, the given processes if they are still alive."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)  # SIGKILL is not instant: return once they are gone


def engine_args(
    spec: LLMSpec, model_path: str, node_rank: int = 0, master: tuple[str, int] | None = None
) -> Any:
    """``AsyncEngineArgs`` for a spec (typed fields first, then ``engine_kwargs``). CPU stages across
    nodes (``spec.stage_nodes > 1``) add the multi-node fields: this ``node_rank`` and the ``master``
    address (the replica's node) where the ranks meet."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": spec.tokenizer,
        "served_model_name": spec.served_model_name,
        "dtype": spec.dtype,
        "max_model_len": spec.max_model_len,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "pipeline_parallel_size": spec.pipeline_parallel_size,
        "distributed_executor_backend": spec.executor_backend,
        "enforce_eager": spec.enforce_eager,
        "seed": spec.seed,
        "disable_log_stats": True,
        "worker_extension_cls": WORKER_EXTENSION,
    }
    if spec.stage_nodes > 1:
        if master is None:
            raise ValueError("CPU pipeline stages across nodes need the master address")
        kwargs.update(
            nnodes=spec.stage_nodes, node_rank=node_rank, master_addr=master[0], master_port=master[1]
        )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(spec.engine_kwargs)
    return AsyncEngineArgs(**kwargs)


def start_engine(async_llm: Any, args: Any, ray_executor: bool) -> Any:
    """Start ``AsyncLLM``. With the Ray executor, hand it the replica's placement group explicitly:
    the engine core is a separate process (a new Ray driver) that would not see it otherwise, and its
    GPU bundles are where the workers must go."""
    if not ray_executor:
        return async_llm.from_engine_args(args)
    import ray
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.abstract import Executor

    config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    pg = ray.util.get_current_placement_group() if ray.is_initialized() else None
    if pg is not None:
        config.parallel_config.placement_group = pg
    return async_llm(vllm_config=config, executor_class=Executor.get_class(config), log_stats=False)
