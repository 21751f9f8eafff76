"""Scenarios that need a Ray driver of their own (a local multi-node cluster) run in a subprocess: the
test session may already hold the single-node Ray of ``tests/conftest.py``. Shared by the two-node
tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_scenario(module: str, out: Path, *args: str, timeout_s: float = 900) -> dict[str, Any]:
    """Run ``module``'s ``_scenario(out, *args)`` in a new process (and session) and return the JSON it
    wrote to ``out``; the test fails with the process's output if it does not exit 0."""
    call = ", ".join(repr(a) for a in (str(out), *args))
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from {module} import _scenario; _scenario({call})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        start_new_session=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"scenario failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return dict(json.loads(out.read_text()))


def wait_200(c: Any, url: str, timeout_s: float = 240.0) -> None:
    """Poll ``url`` with the httpx client ``c`` until it answers 200 (TimeoutError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if c.get(url).status_code == 200:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


# -- in the scenario's subprocess -----------------------------------------------------------------------
def loopback_driver() -> None:
    """The scenario's first step, before Ray is imported: no auth, and "this node" is 127.0.0.1 (the
    nodes of ``LocalCluster`` listen there)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from serve_app.topology.local_cluster import use_loopback

    use_loopback()


@contextmanager
def two_nodes(namespace: str) -> Iterator[str]:
    """A local cluster of two nodes (``head`` and ``worker-1``), this process its driver in
    ``namespace``, Serve's proxy started on head; yields the proxy's base URL. Everything stops on exit."""
    from serve_app.topology.local_cluster import LocalCluster, connect, default_nodes, start_serve

    with LocalCluster(default_nodes(1)) as cluster:
        connect(cluster.address, logging_level="WARNING", namespace=namespace)
        yield start_serve()


def trained_demo(models: list[str]) -> tuple[Path, list[str]]:
    """``models`` trained on a small split of the demo dataset (120 training texts) in a new temporary
    folder: (the folder, the split's 40 test texts)."""
    import tempfile

    from serve_app.data import load_dataset, make_split
    from serve_app.train import train_split

    art = Path(tempfile.mkdtemp(prefix="aw-art-"))
    ds = load_dataset("demo")
    split = make_split(ds, 120, 40, 7, 0)
    train_split(split, models, art, ds.labels, ds.source)
    return art, list(split.test.texts)


def spanning_pipeline(model_id: str) -> dict[str, Any]:
    """A two-stage ``tfidf-logreg`` whose replica (and router-side stage) runs on head and whose feature
    stage runs on worker-1: one request's work on two nodes, sampled every 50 ms."""
    return {
        "kind": "pipeline",
        "id": model_id,
        "model": "tfidf-logreg",
        "deployment": {"num_cpus": 1.0, "resources": {"node:head": 0.01}},
        "feature_resources": {"node:worker-1": 0.01},
        "energy": {"sample_period_s": 0.05},
    }
