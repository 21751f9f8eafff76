"""Local deployments for ``accuwatt replay --local`` and ``accuwatt demo``: an isolated Ray + Serve.

``local_serve`` starts a fresh local Ray (own temp dir, ``address="local"`` so it never joins another
cluster, no dashboard), Serve's HTTP proxy on a free port of 127.0.0.1, and tears both down on exit.
``replay_local`` follows the study protocol: for each split, train the models on that split's
training texts (``serve_app.train.train_split``), deploy them (``serve_app.app.build_app``), replay the
split's test texts, and move on; splits whose requests are all recorded are neither trained nor
deployed again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve_app.data import study_splits
from serve_app.env import set_driver_defaults
from serve_app.errors import UsageError
from serve_app.model_ids import check_ids
from serve_app.ports import free_port
from serve_app.replay.config import ReplayConfig
from serve_app.replay.plan import plan_requests
from serve_app.replay.ready import wait_ready_sync
from serve_app.replay.records import read_records
from serve_app.replay.results import RECORDS_FILE
from serve_app.replay.runner import finish, load_test_sets, replay_session
from serve_app.signals import rearm_sigterm, sigterm_unwinds

APP_NAME = "accuwatt"


@contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """A private local Ray instance for the duration of the block (``num_cpus``: logical CPUs, at least
    1; default ``max(8, cores)``). SIGTERM stops it and removes its temporary folder as Ctrl-C does:
    ``ray.init`` replaces the process's SIGTERM handler (its core worker's aborts the process, which
    left the ``aw-ray-*`` folder, and ``accuwatt demo``'s, behind), so ours is installed again after it
    (a SIGTERM while ``ray.init`` itself runs still meets Ray's)."""
    if num_cpus is not None and num_cpus < 1:
        raise UsageError(f"--num-cpus: must be an integer >= 1, got {num_cpus}")
    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    set_driver_defaults()
    with sigterm_unwinds():
        tmp = tempfile.mkdtemp(prefix="aw-ray-")
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus if num_cpus is not None else max(8, os.cpu_count() or 1),
                include_dashboard=False,
                _temp_dir=tmp,
                log_to_driver=False,
                configure_logging=False,
            )
            try:
                rearm_sigterm()  # Ray's handler replaced ours
                yield
            finally:
                try:
                    serve.shutdown()
                finally:
                    ray.shutdown()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def start_http(port: int | None = None) -> str:
    """Start Serve's proxy on 127.0.0.1 (inside ``local_ray``); returns the base URL."""
    from ray import serve

    port = port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def deploy(app_config: dict[str, Any], base_url: str, timeout_s: float = 600.0) -> None:
    """Deploy (or replace) the accuwatt app and wait until ``/readyz`` says every classifier is ready
    (a classifier that fails to start, or a 4xx answer, ends the wait with its reason)."""
    from ray import serve

    from serve_app.app import build_app

    # blocking: a replaced app's old router must not answer the readiness wait
    serve.run(build_app(app_config), name=APP_NAME, route_prefix="/")
    wait_ready_sync(base_url, timeout_s)


@contextmanager
def local_serve(app_config: dict[str, Any], num_cpus: int | None = None) -> Iterator[str]:
    """Ray + Serve + the app described by an ``AppConfig`` dict; yields the base URL."""
    with local_ray(num_cpus):
        url = start_http()
        deploy(app_config, url)
        yield url


def _split_done(
    cfg: ReplayConfig, folders: dict[str, Path], models: list[str], test: Any, run_name: str
) -> bool:
    for m in models:
        path = folders.get(m)
        if path is None:
            return False
        done = {r.key for r in read_records(path / RECORDS_FILE)}
        if any(
            (m, test.split, r.index) not in done
            for r in plan_requests(run_name, m, test, cfg.load.batch_size)
        ):
            return False
    return True


def replay_local(
    cfg: ReplayConfig, embedding_model: str = "packaged:all-MiniLM-L6-v2", num_cpus: int | None = None
) -> list[Path]:
    """The study protocol on local deployments (see the module doc); returns the run folders."""
    from serve_app.classifiers.traditional import MODEL_IDS
    from serve_app.data import load_dataset
    from serve_app.train import train_missing

    if cfg.data.test_file:
        raise UsageError("--local trains per split; with --test-file use --url against a running router")
    models = check_ids(cfg.models, MODEL_IDS, "--local trains the traditional models") or list(MODEL_IDS)
    ds, tests, split_meta = load_test_sets(cfg)
    full = load_dataset(cfg.data.dataset, cfg.data.text_col, cfg.data.label_col)
    splits = {
        s.key: s
        for s in study_splits(full, cfg.data.n_train, cfg.data.n_test, cfg.data.splits, cfg.data.seed)
    }
    run_name = cfg.resolved_run_name(ds.fingerprint)
    session = uuid.uuid4().hex[:12]
    artifacts_root = Path(cfg.output.out) / "_artifacts" / ds.name / ds.fingerprint[:8]
    folders: dict[str, Path] = {}
    with local_ray(num_cpus):
        url = start_http()
        for test in tests:
            if folders and _split_done(cfg, folders, models, test, run_name):
                continue
            art = artifacts_root / test.split
            train_missing(splits[test.split], models, art, full, embedding_model)
            app_cfg = {
                "classifiers": [{"kind": "traditional", "id": m} for m in models],
                "artifacts_dir": str(art),
            }
            deploy(app_cfg, url)
            asyncio.run(replay_session(cfg, url, ds, split_meta, models, [test], session, folders))
    return finish(folders)
