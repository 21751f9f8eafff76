"""Where vLLM runs a replica's model: each worker reports its process, Ray node and GPU.

vLLM mixes :class:`WorkerPlace` into its worker class (``worker_extension_cls``, set by
``llm_engine.engine_args``) and ``LLMClassifier.workers`` asks every rank through
``collective_rpc("accuwatt_where")``. This works the same for every executor: ``uni`` (the worker is
the engine core, a child of the replica), ``mp`` (children of the engine core), and ``ray`` (actors in
the replica's placement group, on several nodes with pipeline parallelism), so the replica's meter
covers exactly the GPUs and processes that hold the model.

A GPU is reported by its UUID (``GPU-...``, what NVML matches whatever ``CUDA_VISIBLE_DEVICES``
says), else by the physical id the visible-device list maps the CUDA index to.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from serve_app.classifiers.llm_stages import NODE_ID_ENV

WORKER_EXTENSION = "serve_app.classifiers.llm_workers.WorkerPlace"
WHERE_METHOD = "accuwatt_where"


class WorkerPlace:
    """Mixed into vLLM's worker class; adds one RPC method (no state, no other attribute)."""

    def accuwatt_where(self) -> dict[str, Any]:
        return describe_worker(getattr(self, "device", None), getattr(self, "rank", None))


def describe_worker(device: Any, rank: int | None) -> dict[str, Any]:
    """This process's place: ``{"rank", "pid", "host", "node_id", "device", "gpu"}``. ``node_id`` is
    None outside a Ray worker (then the process runs on the replica's node); ``gpu`` is None on CPU."""
    kind = getattr(device, "type", None) or "cpu"
    return {
        "rank": rank,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "node_id": _ray_node_id(),
        "device": str(device) if device is not None else "cpu",
        "gpu": _gpu_id(device) if kind == "cuda" else None,
    }


def _ray_node_id() -> str | None:
    """The Ray node of this process: its own, in a Ray worker; else the one a pipeline stage actor
    put in the environment of the ranks it started (``llm_stages.NODE_ID_ENV``)."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:  # not a Ray worker
        pass
    return os.environ.get(NODE_ID_ENV) or None


def _gpu_id(device: Any) -> str | None:
    """The physical GPU behind a CUDA device: its UUID, else the id ``CUDA_VISIBLE_DEVICES`` lists."""
    index = getattr(device, "index", None) or 0
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(index).uuid)
        if uuid:
            return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    except Exception:  # an old torch without the uuid property
        pass
    return physical_gpu_id(index, os.environ.get("CUDA_VISIBLE_DEVICES"))


def physical_gpu_id(cuda_index: int, visible_devices: str | None) -> str:
    """CUDA device ``cuda_index`` as a physical id: the index-th entry of ``CUDA_VISIBLE_DEVICES``
    (an index or UUID), or the index itself when that variable is unset."""
    if visible_devices is None:
        return str(cuda_index)
    visible = [v.strip() for v in visible_devices.split(",") if v.strip()]
    if cuda_index >= len(visible):
        raise ValueError(f"CUDA device {cuda_index} not in CUDA_VISIBLE_DEVICES={visible_devices!r}")
    return visible[cuda_index]
