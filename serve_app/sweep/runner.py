"""``accuwatt sweep FILE``: deploy each topology in turn, replay the same dataset and splits, tear down.

For every topology: a fresh local cluster with ``nodes`` nodes (or, with ``--address``, the running
cluster, e.g. GPU nodes started by ``ray up``), Serve's proxy on the head only, then per split: train
the traditional models on the split's training texts (once per split, shared by all topologies),
deploy, replay the split's test texts with ``serve_app.replay``, next split. Run folders land in
``<out>/runs/<dataset>/<topology>/<model>/<run>/``; ``<out>/report/`` gets ``accuwatt report``'s report
and ``sweep.md`` (single vs double node, GPU count effect, energy-vs-duration regression) over this
sweep's run folders only (``<run>`` named by its settings, so an older sweep in the same ``--out``
stays out). A topology that fails is recorded in ``sweep.json`` and ``sweep.md`` and the sweep goes on;
it then ends with `SweepFailed` (``accuwatt sweep`` exits 1).

With ``--address`` the driver joins that cluster with a plain ``ray.init(address=...)`` and must run on
its head: Serve's proxy listens on the head's loopback, where the replay sends its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from serve_app.data import Dataset, load_dataset, study_splits
from serve_app.errors import UsageError
from serve_app.replay.config import ReplayConfig, ReplayData, ReplayLoad, ReplayOutput
from serve_app.replay.local import deploy
from serve_app.replay.results import find_runs, load_run, run_dir
from serve_app.replay.runner import finish, load_test_sets, replay_session
from serve_app.report.cli import build_report
from serve_app.sweep.compare import sweep_report
from serve_app.sweep.config import SweepFile, Topology, classifier_specs
from serve_app.topology.local_cluster import LocalCluster, NodeSpec, connect, start_serve
from serve_app.train import train_missing


class SweepFailed(RuntimeError):
    """Some topologies failed; the others ran and the report (``report``) covers them."""

    def __init__(self, report: Path, failures: dict[str, str], selected: int) -> None:
        self.report, self.failures = report, failures
        names = ", ".join(failures)
        super().__init__(
            f"{len(failures)} of {selected} topologies failed ({names}); the report covers the others: "
            f"{report}"
        )


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
    """Train the traditional models once per split; returns split key -> artifacts folder. A training
    failure the user can fix (an encoder, a folder in the way, a split too small) is a `UsageError`."""

    out: dict[str, Path] = {}
    models = sweep.traditional_models()
    for sp in study_splits(ds, sweep.n_train, sweep.n_test, sweep.splits, sweep.seed):
        art = art_root / sp.key
        try:
            train_missing(sp, models, art, ds, sweep.embedding_model)
        except UsageError:
            raise
        except (OSError, ValueError, ImportError) as exc:  # ArtifactError is an OSError
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise UsageError(
                f"training {', '.join(models)} on split {sp.key} into {art} failed: {why}"
            ) from exc
        out[sp.key] = art
    return out


def run_topology(
    sweep: SweepFile, topo: Topology, out: Path, artifacts: dict[str, Path], address: str | None = None
) -> list[Path]:
    """Deploy one topology, replay every split, tear down; returns the run folders. Without ``address``
    on a fresh local cluster (stopped however this ends); with it, on that cluster, joined with a plain
    ``ray.init(address=...)`` (e.g. a ``ray up`` cluster, whose nodes are not on loopback)."""
    import ray
    from ray import serve

    cfg = _replay_config(sweep, topo, out)
    ds, tests, split_meta = load_test_sets(cfg)
    namespace = f"accuwatt-sweep-{uuid.uuid4().hex[:6]}"
    cluster = None
    serving = False
    folders: dict[str, Path] = {}
    try:
        if address is None:
            names = ["head"] + [f"worker-{i}" for i in range(1, topo.nodes)]
            gpus_per_node = topo.gpus / topo.nodes if topo.gpus else 0
            cluster = LocalCluster([NodeSpec(n, topo.cpus_per_node, gpus_per_node) for n in names])
            cluster.start()
            connect(cluster.address, logging_level=logging.WARNING, namespace=namespace)
        else:
            ray.init(address=address, logging_level=logging.WARNING, namespace=namespace)
        url = start_serve()
        serving = True
        session = uuid.uuid4().hex[:12]
        for test in tests:
            app = {"classifiers": classifier_specs(sweep, topo), "artifacts_dir": str(artifacts[test.split])}
            deploy(app, url)
            asyncio.run(replay_session(cfg, url, ds, split_meta, cfg.models, [test], session, folders))
    finally:
        if serving:  # a cluster given by --address keeps running: take the sweep's apps off it
            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return finish(folders)


def sweep_run_folders(sweep: SweepFile, out: Path, ds: Dataset, topologies: list[Topology]) -> list[Path]:
    """The run folders of ``topologies`` that this sweep's settings name (one per topology and model,
    ``<out>/runs/<dataset>/<topology>/<model>/<run>``, ``<run>`` as the replay resolves it) and that
    exist. Runs of other settings left in the same ``--out`` (another concurrency, n_test, ...) have
    another ``<run>`` and stay out of the report."""
    folders = []
    for topo in topologies:
        run = _replay_config(sweep, topo, out).resolved_run_name(ds.fingerprint)
        for model in sweep.model_ids():
            path = run_dir(out / "runs", ds.name, topo.name, model, run)
            if find_runs([path]) == [path]:
                folders.append(path)
    return folders


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run_sweep(path: Path, out: Path, address: str | None = None, only: list[str] | None = None) -> Path:
    """Run every topology of a sweep file (those of ``only`` if given); returns the path of ``sweep.md``.

    A topology that fails is recorded (``sweep.json``: ``topologies.<name>``, status, error, traceback;
    ``sweep.md``: "Failed topologies") and the sweep goes on with the next; the report covers the
    others, then `SweepFailed` is raised. Ctrl-C stops the sweep at once."""

    sweep = SweepFile.from_yaml(path)
    ds = load_dataset(sweep.dataset)  # a missing dataset is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    artifacts = _train(sweep, out / "_artifacts", ds)
    settings = {t.name: t.model_dump() for t in sweep.topologies}
    selected = [t for t in sweep.topologies if not only or t.name in only]
    state: dict[str, Any] = {
        "file": str(path),
        "sweep": sweep.model_dump(mode="json"),
        "started_unix_s": time.time(),
        "topologies": {t.name: {"status": "pending"} for t in selected},
    }
    _write_json(out / "sweep.json", state)
    failures: dict[str, str] = {}
    for topo in selected:
        started = time.time()
        try:
            runs = run_topology(sweep, topo, out, artifacts, address)
        except Exception as exc:  # recorded, reported; the sweep goes on and then exits non-zero
            why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            failures[topo.name] = why
            state["topologies"][topo.name] = {
                "status": "failed",
                "error": why,
                "traceback": traceback.format_exc(),
                "seconds": time.time() - started,
            }
            print(f"accuwatt sweep: topology {topo.name} failed ({why}); going on", file=sys.stderr)
        else:
            state["topologies"][topo.name] = {
                "status": "done",
                "runs": [str(p) for p in runs or []],
                "seconds": time.time() - started,
            }
        _write_json(out / "sweep.json", state)
    # The report: this sweep's runs (its settings' run names), never a failed topology's partial ones.
    folders = sweep_run_folders(sweep, out, ds, [t for t in sweep.topologies if t.name not in failures])
    report_dir = out / "report"
    (report_dir / "report.md").unlink(missing_ok=True)  # never leave an older sweep's report behind
    if folders:
        try:
            build_report(folders, report_dir)
        except UsageError as exc:  # e.g. no answered request in any run
            state["report_error"] = str(exc)
            print(f"accuwatt sweep: report.md not written: {exc}", file=sys.stderr)
    md = sweep_report([load_run(p) for p in folders], settings, sweep.name, report_dir, failures)
    state.update(finished_unix_s=time.time(), report=str(md), failed=sorted(failures))
    _write_json(out / "sweep.json", state)
    if failures:
        raise SweepFailed(md, failures, len(selected))
    return md
