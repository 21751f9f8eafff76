"""``accuwatt sweep FILE``: deploy each topology in turn, replay the same dataset and splits, tear down.

For every topology: a fresh local cluster with ``nodes`` nodes (or, with ``--address``, the running
cluster, e.g. GPU nodes started by ``ray up``), Serve's proxy on the head only, then per split: train
the traditional models on the split's training texts (once per split, shared by all topologies),
deploy, replay the split's test texts with ``serve_app.replay``, next split. Run folders land in
``<out>/runs/<dataset>/<topology>/<model>/<run>/``; ``<out>/report/`` gets ``accuwatt report``'s report
and ``sweep.md`` (single vs double node, GPU count effect, energy-vs-duration regression).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from serve_app.data import Dataset, load_dataset, study_splits
from serve_app.replay.config import ReplayConfig, ReplayData, ReplayLoad, ReplayOutput
from serve_app.replay.local import deploy
from serve_app.replay.results import find_runs, load_run
from serve_app.replay.runner import finish, load_test_sets, replay_session
from serve_app.report.cli import build_report
from serve_app.sweep.compare import sweep_report
from serve_app.sweep.config import SweepFile, Topology, classifier_specs
from serve_app.topology.local_cluster import LocalCluster, NodeSpec, connect, start_serve
from serve_app.train import train_missing


def _replay_config(sweep: SweepFile, topo: Topology, out: Path) -> Any:

    return ReplayConfig(
        models=sweep.model_ids(),
        data=ReplayData(
            dataset=sweep.dataset,
            n_train=sweep.n_train,
            n_test=sweep.n_test,
            splits=sweep.splits,
            seed=sweep.seed,
        ),
        load=ReplayLoad(concurrency=sweep.concurrency, batch_size=sweep.batch_size),
        output=ReplayOutput(out=str(out / "runs"), topology=topo.name, progress=False),
    )


def _train(sweep: SweepFile, art_root: Path, ds: Dataset) -> dict[str, Path]:
    """Train the traditional models once per split; returns split key -> artifacts folder."""

    out: dict[str, Path] = {}
    for sp in study_splits(ds, sweep.n_train, sweep.n_test, sweep.splits, sweep.seed):
        art = art_root / sp.key
        train_missing(sp, sweep.traditional_models(), art, ds, sweep.embedding_model)
        out[sp.key] = art
    return out


def run_topology(
    sweep: SweepFile, topo: Topology, out: Path, artifacts: dict[str, Path], address: str | None = None
) -> list[Path]:
    """Deploy one topology, replay every split, tear down; returns the run folders."""
    from ray import serve

    cfg = _replay_config(sweep, topo, out)
    ds, tests, split_meta = load_test_sets(cfg)
    cluster = None
    if address is None:
        names = ["head"] + [f"worker-{i}" for i in range(1, topo.nodes)]
        gpus_per_node = topo.gpus / topo.nodes if topo.gpus else 0
        cluster = LocalCluster([NodeSpec(n, topo.cpus_per_node, gpus_per_node) for n in names]).start()
        address = cluster.address
    connect(address, logging_level="WARNING", namespace=f"accuwatt-sweep-{uuid.uuid4().hex[:6]}")
    folders: dict[str, Path] = {}
    try:
        url = start_serve()
        session = uuid.uuid4().hex[:12]
        for test in tests:
            app = {"classifiers": classifier_specs(sweep, topo), "artifacts_dir": str(artifacts[test.split])}
            deploy(app, url)
            asyncio.run(replay_session(cfg, url, ds, split_meta, cfg.models, [test], session, folders))
        serve.shutdown()
    finally:
        import ray

        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return finish(folders)


def run_sweep(path: Path, out: Path, address: str | None = None, only: list[str] | None = None) -> Path:
    """Run every topology of a sweep file; returns the path of ``sweep.md``."""

    sweep = SweepFile.from_yaml(path)
    ds = load_dataset(sweep.dataset)  # a missing dataset is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    artifacts = _train(sweep, out / "_artifacts", ds)
    settings = {t.name: t.model_dump() for t in sweep.topologies}
    (out / "sweep.json").write_text(
        json.dumps(
            {"file": str(path), "sweep": sweep.model_dump(mode="json"), "started_unix_s": time.time()},
            indent=2,
        )
    )
    for topo in sweep.topologies:
        if only and topo.name not in only:
            continue
        run_topology(sweep, topo, out, artifacts, address)
    build_report([out / "runs"], out / "report")
    runs = [load_run(p) for p in find_runs([out / "runs"])]
    return sweep_report(runs, settings, sweep.name, out / "report")
