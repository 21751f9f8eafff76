"""Shared fixtures: an isolated local Ray (own temp dir, free ports, auth off) and Serve apps on it.

Markers come from the folder: tests/unit -> unit, tests/integration -> integration, tests/llm ->
llm + slow, tests/gpu -> gpu (skipped without an NVIDIA GPU).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.env import set_ray_node_defaults
from serve_app.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
set_ray_node_defaults()  # every Ray the tests start runs as the nodes accuwatt starts do


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        folder = parts[0] if len(parts) > 1 else "unit"
        if folder in ("unit", "integration", "gpu"):
            item.add_marker(getattr(pytest.mark, folder))
        if folder == "llm":
            item.add_marker(pytest.mark.llm)
            item.add_marker(pytest.mark.slow)


def wait_for(pred: Any, timeout_s: float, what: str) -> Any:
    """``pred()``'s first truthy value, polled every 0.25 s; an AssertionError naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up within {timeout_s} s")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """One isolated single-node Ray for the test session. 8 logical CPUs on 2 cores, on purpose:
    replicas ask for fractions and mostly wait on I/O."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="aw-ray-", dir="/tmp")
    metrics_port = free_port()
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        _temp_dir=temp_dir,
        _metrics_export_port=metrics_port,
        namespace="accuwatt-tests",
        logging_level="WARNING",
    )
    yield {"temp_dir": temp_dir, "metrics_port": metrics_port}
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_http(ray_cluster: dict[str, Any]) -> str:
    """Serve's HTTP proxy on a free loopback port; returns its base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six traditional models trained once on the bundled demo dataset (smaller splits)."""
    from serve_app.classifiers.traditional import MODEL_IDS
    from serve_app.data import load_dataset, make_split
    from serve_app.train import train_split

    out = tmp_path_factory.mktemp("artifacts")
    ds = load_dataset("demo")
    train_split(make_split(ds, 200, 100, 7, 0), MODEL_IDS, out, ds.labels, ds.source)
    return out


@pytest.fixture
def serve_app_factory(serve_http: str) -> Iterator[Callable[..., str]]:
    """Deploy an `AppConfig` dict as a Serve application; returns the HTTP base URL. Apps are deleted
    after the test."""
    from ray import serve

    from serve_app.app import build_app

    names: list[str] = []

    def deploy(app_config: dict[str, Any], name: str = "accuwatt", route_prefix: str = "/") -> str:
        serve.run(build_app(app_config), name=name, route_prefix=route_prefix, blocking=False)
        names.append(name)
        base = serve_http + (route_prefix.rstrip("/"))
        wait_http(base + "/readyz")
        return base

    yield deploy
    for name in names:
        serve.delete(name)


def traditional_config(
    artifacts: Path, model_ids: list[str] | tuple[str, ...], **extra: Any
) -> dict[str, Any]:
    return {
        "artifacts_dir": str(artifacts),
        "classifiers": [{"kind": "traditional", "id": m} for m in model_ids],
        **extra,
    }
