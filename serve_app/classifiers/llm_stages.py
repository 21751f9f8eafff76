"""vLLM for CPU with pipeline stages on other Ray nodes: headless stage executors in Ray actors.

vLLM for CPU refuses its Ray executor, so a CPU pipeline across nodes uses the multiprocessing
executor's multi-node mode (what ``vllm serve --headless`` does on the other nodes): the replica's
engine is ``node_rank`` 0 of ``nnodes`` (its stage's ranks are its children), and each further stage
is a :class:`PipelineStage` actor, placed in its own bundle of the replica's placement group (bundles
``STRICT_SPREAD``: one node each, see ``llm_config``), that runs a headless ``MultiprocExecutor`` for
its ``node_rank``. The ranks meet through ``torch.distributed`` at the replica's ``master_addr:port``
and vLLM's message queues.

Energy: a stage's ranks are child processes of its actor, so the actor's PID (children included) is
what the replica's meter must watch on that node (``LLMClassifier.workers``); the ranks learn
their Ray node from :data:`NODE_ID_ENV` (they are not Ray workers themselves).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

NODE_ID_ENV = "ACCUWATT_RAY_NODE_ID"
"""Set in a stage actor for the vLLM ranks it starts: the Ray node they run on."""
SHUTDOWN_TIMEOUT_S = 30.0


class PipelineStage:
    """One pipeline stage on another node: a headless multiprocessing executor for ``node_rank``
    (from ``engine_args``). Made a Ray actor by :func:`start_stages`; its constructor returns at once
    (the executor waits for the other ranks, the replica's engine among them, in a thread)."""

    def __init__(self, engine_args: Any) -> None:
        import ray

        self._node_id = str(ray.get_runtime_context().get_node_id())
        os.environ[NODE_ID_ENV] = self._node_id
        self._executor: Any = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(engine_args,), name="vllm-stage", daemon=True)
        self._thread.start()

    def _run(self, engine_args: Any) -> None:
        try:
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.executor.multiproc_executor import MultiprocExecutor

            config = engine_args.create_engine_config(
                usage_context=UsageContext.ENGINE_CONTEXT, headless=True
            )
            self._executor = MultiprocExecutor(config, monitor_workers=False)
            self._executor.start_worker_monitor(inline=True)  # returns when a rank exits
        except BaseException as exc:  # reported through where()
            log.exception("pipeline stage failed")
            self._error = f"{type(exc).__name__}: {exc}"

    def where(self) -> dict[str, Any]:
        """``{"pid", "node_id", "error"}``: the process whose tree holds this stage's ranks."""
        return {"pid": os.getpid(), "node_id": self._node_id, "error": self._error}

    def shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown()


def start_stages(engine_args: list[Any], cpus: float, env: dict[str, str]) -> list[Any]:
    """Start one :class:`PipelineStage` per entry of ``engine_args`` (``node_rank`` 1, 2, ...), each in
    bundle ``node_rank`` of this replica's placement group, with ``env`` as its environment."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.get_current_placement_group() if ray.is_initialized() else None
    if pg is None:
        raise RuntimeError(
            "CPU pipeline stages across nodes start from a Ray Serve replica whose placement group has "
            "a bundle per stage (LLMSpec.serve_options); none was found"
        )
    stage = ray.remote(PipelineStage)
    return [
        stage.options(
            num_cpus=cpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
            runtime_env={"env_vars": env},
        ).remote(args)
        for rank, args in enumerate(engine_args, start=1)
    ]


def stop_stages(stages: list[Any]) -> None:
    """Shut every stage's executor down (its ranks exit), then end the actors."""
    import ray

    for s in stages:
        with contextlib.suppress(Exception):
            ray.get(s.shutdown.remote(), timeout=SHUTDOWN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            ray.kill(s)


def master_address() -> tuple[str, int]:
    """This node's address (what the other nodes reach it by) and a free port on it."""
    import socket

    import ray

    host = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((host, 0))
        return host, int(s.getsockname()[1])
