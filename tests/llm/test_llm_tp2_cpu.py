"""Tensor parallelism 2 on CPU (multiprocessing executor, one core per rank) on the tiny model, whose
4 heads / 2 KV heads divide by 2 (SmolLM2's 9 heads do not). Slow: two worker processes start."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from serve_app.classifiers.llm_config import LLMSpec
from serve_app.energy.footprint import descendant_pids
from tests.llm.conftest import CPU_ENV, EngineLoop, build, cpu_spec


def tp2_spec(model: str) -> dict[str, object]:
    env = {**CPU_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0|1", "OMP_NUM_THREADS": "1"}
    return cpu_spec(model, id="tiny-tp2", tensor_parallel_size=2, cpus_per_worker=0.5, env_vars=env)


def test_tp2_spec_asks_for_a_bundle_per_rank(tiny_model_dir: Path) -> None:
    spec = LLMSpec.model_validate(tp2_spec(str(tiny_model_dir)))
    opts = spec.serve_options()
    assert opts["placement_group_bundles"] == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert spec.executor_backend == "mp"


@pytest.mark.timeout(1200)
def test_tp2_on_cpu_classifies(tiny_model_dir: Path, engine_loop: EngineLoop) -> None:
    clf = build(tp2_spec(str(tiny_model_dir)))
    try:
        assert len(clf._engine_children) >= 3  # engine core + two TP workers (+ helpers)
        workers = engine_loop.run(clf.workers())
        assert sorted(w.role for w in workers) == ["vllm-rank-0", "vllm-rank-1"]
        assert len({w.pid for w in workers}) == 2
        assert {w.pid for w in workers} <= descendant_pids()  # mp workers: under this process
        engine_core = set(clf._engine_children) - {w.pid for w in workers}
        assert engine_core, "the engine core is a process of its own"
        for mode in ("choice", "score", "paper"):
            preds = engine_loop.run(clf.predict(["great film", "awful film"], mode))
            assert len(preds) == 2
            if mode != "paper":
                assert all(p.label in clf.labels for p in preds)
    finally:
        children = list(clf._engine_children)
        clf.close()
    alive = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
