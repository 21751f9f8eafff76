"""``accuwatt sweep FILE``: deploy each topology in turn, replay the same dataset and splits, tear down.

For every topology: a fresh local cluster with ``nodes`` nodes (or, with ``--address``, the running
cluster, e.g. GPU nodes started by ``ray up``), Serve's proxy on the head only, then per split: train
the traditional models on the split's training texts (once per split, shared by all topologies),
deploy, replay the split's test texts with ``serve_app.replay``, next split. Run folders land in
``<out>/runs/<dataset>/<topology>/<model>/<run>/``; ``<out>/report/`` gets ``accuwatt report``'s report
and ``sweep.md`` (single vs double node, GPU count effect, energy-vs-duration regression) over this
sweep's run folders only (``<run>`` named by its settings: dataset, splits, load shape, and a digest of
the topology's settings, the model specs and the encoder, so an older sweep in the same ``--out``, or
one whose topology or models have changed since, stays out; an interrupted sweep rerun as it was
resumes its folders). A topology that fails is recorded in ``sweep.json`` and ``sweep.md`` and the
sweep goes on; it then ends with `SweepFailed` (``accuwatt sweep`` exits 1). Without ``--address``, a
topology its local cluster could never schedule is refused before anything trains (`local_nodes`).

With ``--address`` the driver joins that cluster with a plain ``ray.init(address=...)`` and must run on
its head: Serve's proxy listens on the head's loopback, where the replay sends its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig
from serve_app.data import Dataset, load_dataset, study_splits
from serve_app.env import set_driver_defaults
from serve_app.errors import UsageError
from serve_app.replay.config import ReplayConfig, ReplayData, ReplayLoad, ReplayOutput
from serve_app.replay.local import deploy
from serve_app.replay.results import find_runs, load_run, run_dir
from serve_app.replay.runner import finish, load_test_sets, replay_session
from serve_app.report.cli import build_report
from serve_app.sweep.compare import sweep_report
from serve_app.sweep.config import SweepFile, Topology, classifier_specs
from serve_app.topology.local_cluster import (
    LocalCluster,
    NodeSpec,
    connect,
    gpu_devices,
    start_serve,
)
from serve_app.topology.nodes import NODE_RESOURCE_PREFIX
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


def settings_digest(sweep: SweepFile, topo: Topology) -> str:
    """Eight hex digits over what the results depend on and the replay's run name leaves out: the
    topology's settings (nodes, GPUs, replicas, placement, ...), the model specs and, for ``embedding-*``
    models, the encoder. A rerun into the same ``--out`` after any of them changed gets run folders of
    its own instead of resuming (and reporting) the complete ones of the old settings."""
    scope: dict[str, Any] = {
        "topology": topo.model_dump(mode="json", exclude={"name"}),
        "models": sweep.models,
    }
    if any(m.startswith("embedding-") for m in sweep.traditional_models()):
        scope["embedding_model"] = sweep.embedding_model
    return hashlib.sha256(json.dumps(scope, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _replay_config(
    sweep: SweepFile, topo: Topology, out: Path, fingerprint: str | None = None, retry_failed: bool = False
) -> Any:
    """The replay of one topology; its run name is the replay's own (dataset, splits, load shape) plus
    `settings_digest`. ``fingerprint`` is the dataset's (loaded here when not given); ``retry_failed``:
    a resumed run folder's failed requests are sent again (``replay --retry-failed``)."""

    def config(run_name: str | None) -> ReplayConfig:
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
            output=ReplayOutput(
                out=str(out / "runs"),
                run_name=run_name,
                topology=topo.name,
                progress=False,
                retry_failed=retry_failed,
            ),
        )

    fp = fingerprint if fingerprint is not None else load_dataset(sweep.dataset).fingerprint
    return config(f"{config(None).resolved_run_name(fp)}-t{settings_digest(sweep, topo)}")


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


PLAIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def replica_bundles(spec: Any) -> tuple[list[dict[str, float]], str | None]:
    """What one replica of a classifier spec asks Ray for, as Ray places it: its placement group's
    bundles and strategy, or (no placement group) one bundle of the replica actor's own CPUs, GPUs and
    custom resources (the options ``serve_app.app`` deploys it with)."""
    opts = spec.serve_options()
    if opts.get("placement_group_bundles"):
        return [dict(b) for b in opts["placement_group_bundles"]], opts.get("placement_group_strategy")
    d = spec.deployment
    actor = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus, "resources": dict(d.resources)}
    actor.update({k: v for k, v in opts.get("ray_actor_options", {}).items() if k in actor})
    bundle = {"CPU": float(actor["num_cpus"]), "GPU": float(actor["num_gpus"]), **actor["resources"]}
    return [{k: float(v) for k, v in bundle.items() if v > 0}], None


def _offered(key: str, amount: float, names: list[str]) -> bool:
    """Whether a local node offers ``amount`` of resource ``key``: CPUs, GPUs and memory (checked by
    amount in `_fits`), or ``node:<name>`` of one of its nodes (1 unit each); no other custom one."""
    if key in PLAIN_RESOURCES:
        return True
    node = key.removeprefix(NODE_RESOURCE_PREFIX)
    return key.startswith(NODE_RESOURCE_PREFIX) and node in names and amount <= 1


def _fits(
    topo: Topology,
    model: str,
    bundles: list[dict[str, float]],
    strategy: str | None,
    node: NodeSpec,
    names: list[str],
) -> None:
    """Refuse (`UsageError`) a replica that no node of the local cluster could ever hold: a bundle, or
    all of a ``STRICT_PACK`` group, asking more CPUs or GPUs than a node has, or a custom resource no
    local node offers."""
    have = {"CPU": float(node.num_cpus), "GPU": float(node.num_gpus)}
    groups = [("a placement bundle", b) for b in bundles]
    if strategy == "STRICT_PACK":
        groups.append(("its STRICT_PACK group", {k: sum(b.get(k, 0.0) for b in bundles) for k in have}))
    for what, asks in groups:
        for key, amount in asks.items():
            if key in have and amount > have[key] + 1e-9:
                raise UsageError(
                    f"topology {topo.name}: model {model}: {what} asks {amount:g} {key}s, a local node "
                    f"of this topology has {have[key]:g} (cpus_per_node, or gpus x replicas / nodes); "
                    "change the topology, or run it on a cluster that has them with --address"
                )
            if not _offered(key, amount, names):
                raise UsageError(
                    f"topology {topo.name}: model {model}: asks {amount:g} of resource {key!r}, which no "
                    f"local node has (they offer {', '.join(NODE_RESOURCE_PREFIX + n for n in names)}, 1 "
                    "each); change the spec, or run it on a cluster that has it with --address"
                )


def local_nodes(sweep: SweepFile, topo: Topology) -> list[NodeSpec]:
    """The nodes of the local cluster a topology runs on: ``head``, ``worker-1``, ... each with
    ``cpus_per_node`` CPUs and an equal share of the GPUs: the topology's ``gpus``, or all the GPUs its
    replicas ask where that is more (``gpus`` is per replica: ``replicas: 2`` asks twice as many). A
    topology the local cluster could never schedule is a `UsageError` before anything trains or starts
    (its deployment would wait 10 minutes, then fail): GPUs that do not split evenly over the nodes (a
    Ray node has whole GPUs), or a replica asking more than one node has (`_fits`)."""
    cfg = AppConfig.model_validate({"classifiers": classifier_specs(sweep, topo)})
    asks = [(c, *replica_bundles(c)) for c in cfg.classifiers]
    asked = sum(c.deployment.num_replicas * sum(b.get("GPU", 0.0) for b in bs) for c, bs, _ in asks)
    total = max(topo.gpus, math.ceil(asked - 1e-9))
    if total % topo.nodes:
        raise UsageError(
            f"topology {topo.name}: {total} GPU(s) (gpus x replicas) do not split evenly over "
            f"{topo.nodes} local nodes (a Ray node has whole GPUs); make it a multiple of {topo.nodes}, "
            "or run it on a cluster that has them with --address"
        )
    names = ["head"] + [f"worker-{i}" for i in range(1, topo.nodes)]
    nodes = [NodeSpec(n, topo.cpus_per_node, total // topo.nodes) for n in names]
    try:
        gpu_devices(nodes, os.environ.get("CUDA_VISIBLE_DEVICES"))
    except ValueError as exc:
        raise UsageError(f"topology {topo.name}: {exc}") from None
    for c, bundles, strategy in asks:
        _fits(topo, c.id, bundles, strategy, nodes[0], names)
    return nodes


def run_topology(
    sweep: SweepFile,
    topo: Topology,
    out: Path,
    artifacts: dict[str, Path],
    address: str | None = None,
    retry_failed: bool = False,
) -> list[Path]:
    """Deploy one topology, replay every split, tear down; returns the run folders. Without ``address``
    on a fresh local cluster (stopped however this ends); with it, on that cluster, joined with a plain
    ``ray.init(address=...)`` (e.g. a ``ray up`` cluster, whose nodes are not on loopback)."""
    import ray
    from ray import serve

    cfg = _replay_config(sweep, topo, out, retry_failed=retry_failed)
    ds, tests, split_meta = load_test_sets(cfg)
    namespace = f"accuwatt-sweep-{uuid.uuid4().hex[:6]}"
    cluster = None
    serving = False
    folders: dict[str, Path] = {}
    set_driver_defaults()
    try:
        if address is None:
            cluster = LocalCluster(local_nodes(sweep, topo))
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
        run = _replay_config(sweep, topo, out, ds.fingerprint).resolved_run_name(ds.fingerprint)
        for model in sweep.model_ids():
            path = run_dir(out / "runs", ds.name, topo.name, model, run)
            if find_runs([path]) == [path]:
                folders.append(path)
    return folders


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run_sweep(
    path: Path,
    out: Path,
    address: str | None = None,
    only: list[str] | None = None,
    retry_failed: bool = False,
) -> Path:
    """Run every topology of a sweep file (those of ``only`` if given); returns the path of ``sweep.md``.
    ``retry_failed``: the failed requests of run folders resumed from an earlier sweep are sent again.

    A topology that fails is recorded (``sweep.json``: ``topologies.<name>``, status, error, traceback;
    ``sweep.md``: "Failed topologies") and the sweep goes on with the next; the report covers the
    others, then `SweepFailed` is raised. Ctrl-C stops the sweep at once."""

    sweep = SweepFile.from_yaml(path)
    ds = load_dataset(sweep.dataset)  # a missing dataset is refused before anything is written
    selected = [t for t in sweep.topologies if not only or t.name in only]
    if address is None:  # a local cluster that could never hold a topology: refused before training
        for topo in selected:
            local_nodes(sweep, topo)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = _train(sweep, out / "_artifacts", ds)
    settings = {t.name: t.model_dump() for t in sweep.topologies}
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
            runs = run_topology(sweep, topo, out, artifacts, address, retry_failed)
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
