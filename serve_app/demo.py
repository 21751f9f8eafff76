"""``accuwatt demo``: the six study models on this machine, end to end, in one command.

Starts a private local Ray and Serve, deploys ``deployments/local.yaml`` (the six traditional models,
trained on first start from the bundled GermEval 2018 sample), replays the test split of the split
they were trained on (``train_if_missing``: the bundled ``serve_app/data/demo/test.jsonl``, 200 German
tweets, so that ``run.json`` records the training split's majority class, the baseline of the gain and
of CEGI) through HTTP like any client, prints one line per model (accuracy, J/request with its energy
source, p50 latency) and shuts everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serve_app.argtypes import config_error, positive_int
from serve_app.config import AppConfig
from serve_app.data import DEMO_DIR
from serve_app.errors import UsageError
from serve_app.model_ids import add_models_argument, check_ids
from serve_app.replay.config import ReplayData
from serve_app.replay.summary import RunMetrics
from serve_app.signals import sigterm_unwinds

LOCAL_YAML = Path(__file__).resolve().parents[1] / "deployments" / "local.yaml"
DEFAULT_MODELS = (
    "bow-logreg",
    "bow-xgboost",
    "tfidf-logreg",
    "tfidf-xgboost",
    "embedding-logreg",
    "embedding-xgboost",
)


def _load_app_config(path: Path) -> AppConfig:
    """An AppConfig YAML, or a Serve config whose first application's args are one; any problem with
    the file is one line naming it."""
    import yaml

    where = f"--config {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "applications" in data:  # a whole Serve config file
            apps = data["applications"]
            if not (isinstance(apps, list) and apps and isinstance(apps[0], dict)):
                raise UsageError(f"{where}: 'applications' must list at least one application")
            data = apps[0].get("args")
        if not isinstance(data, dict):
            raise UsageError(f"{where}: not an AppConfig (a mapping) or a Serve config with its args")
        return AppConfig.from_args(data)
    except (ValidationError, yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise config_error(where, exc) from None


def _default_artifacts_dir(artifacts_dir: str, config: Path) -> Path:
    """Where the default demo keeps its models, whatever the current folder: ``local.yaml``'s relative
    ``artifacts_dir`` in the checkout that holds it (``serve run`` reads it from the repository root),
    or, installed without that file, accuwatt's user cache. Read from the current folder, ``accuwatt
    demo`` run elsewhere trained six models into an ``artifacts/`` folder it made there."""
    path = Path(artifacts_dir).expanduser()
    if path.is_absolute():
        return path
    if config.is_file():
        return config.resolve().parents[1] / path
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "accuwatt" / path


def demo_app_config(config_path: Path | None = None, models: list[str] | None = None) -> dict[str, Any]:
    """The local deployment's ``AppConfig`` (from ``deployments/local.yaml`` when present), as a dict,
    restricted to ``models``. A ``config_path`` that is not a readable, valid config is refused
    (`UsageError`); the built-in default stands in only for ``local.yaml`` missing from an install.
    Without ``config_path`` the models live in a fixed folder (`_default_artifacts_dir`); a config of
    the user's keeps its ``artifacts_dir`` as ``serve run`` reads it (from the current folder)."""
    if config_path is not None and not config_path.is_file():
        raise UsageError(f"--config {config_path}: no such file")
    path = config_path or LOCAL_YAML
    if path.is_file():
        cfg = _load_app_config(path)
    else:  # installed without the repository's deployments/ folder
        cfg = AppConfig.model_validate(
            {
                "classifiers": [{"kind": "traditional", "id": m} for m in DEFAULT_MODELS],
                "train_if_missing": {"dataset": "demo", "n_train": 300, "n_test": 200},
            }
        )
    data = cfg.model_dump(mode="json")
    if config_path is None:
        data["artifacts_dir"] = str(_default_artifacts_dir(data["artifacts_dir"], path))
    if models:
        check_ids(models, [c["id"] for c in data["classifiers"]], f"{path.name} serves")
        data["classifiers"] = [c for c in data["classifiers"] if c["id"] in models]
    return data


def demo_replay_data(app_cfg: dict[str, Any]) -> ReplayData:
    """The data the demo replays: the test split of the split its models are trained on (the config's
    ``train_if_missing``, split 0), so that ``run.json`` records the training majority class; the
    bundled test file as it is when the config names no such split (the gain and CEGI are then n/a)."""
    t = app_cfg.get("train_if_missing")
    if t is None or t["split_index"] != 0:
        return ReplayData(test_file=str(DEMO_DIR / "test.jsonl"))
    return ReplayData(
        dataset=t["dataset"], n_train=t["n_train"], n_test=t["n_test"], seed=t["seed"], splits=1
    )


def format_table(rows: list[RunMetrics]) -> str:
    """One row per model; ``vs majority``: its accuracy's gain over answering the training split's most
    frequent label for every text (percentage points, the study's baseline), and a last line with that
    baseline's own accuracy on the same texts."""
    head = (
        f"{'model':<20} {'accuracy':>8} {'J/request':>11}  {'source':<10} {'p50 latency':>11} {'errors':>6}"
        f" {'macro-F1':>8} {'vs majority':>11}"
    )
    lines = [head, "-" * len(head)]
    for m in rows:
        jpr = "n/a" if m.j_per_request is None else f"{m.j_per_request:.4g}"
        p50 = "n/a" if m.latency_p50_s is None else f"{m.latency_p50_s * 1000:.1f} ms"
        gain = "n/a" if m.gain_pp is None else f"{m.gain_pp:+.1f} pp"
        lines.append(
            f"{m.model:<20} {m.accuracy:>8.3f} {jpr:>11}  {m.energy_source:<10} {p50:>11} {m.n_errors:>6}"
            f" {m.macro_f1:>8.3f} {gain:>11}"
        )
    baselines = {round(m.majority_accuracy, 6) for m in rows if m.majority_accuracy is not None}
    if len(baselines) == 1:
        lines.append(
            f"(the training split's majority class alone, answered for every text: accuracy {baselines.pop():.3f})"
        )
    return "\n".join(lines)


def demo_run_name() -> str:
    """This demo's run folder name, new at each start (UTC time to the second): a second ``accuwatt
    demo --out DIR`` measures again. Under one fixed name it resumed the first run's folder, found
    every request recorded, sent none and printed the first run's figures as its own."""
    return "demo-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _make_out(out: Path) -> None:
    """Make ``--out`` before anything starts; a file in its way or no permission is one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder goes, no permission, read-only
        raise UsageError(f"--out {out}: cannot make the folder ({exc.strerror or exc})") from None


def cpus_asked(app_cfg: dict[str, Any]) -> float:
    """The logical CPUs the app's replicas ask Ray for, at least: each classifier's ``num_cpus`` x its
    replicas, and the router's in the two-hop layout (an LLM's engine workers may ask for more)."""
    total = sum(
        float(c["deployment"]["num_cpus"]) * int(c["deployment"]["num_replicas"])
        for c in app_cfg["classifiers"]
    )
    router = app_cfg.get("router") or {}
    if router.get("layout", "two_hop") == "two_hop":
        total += float(router.get("num_cpus", 0.0))
    return total


def check_cpus(app_cfg: dict[str, Any], num_cpus: int | None) -> None:
    """Refuse (`UsageError`) a local Ray too small for the app (``--num-cpus``, else `local_ray`'s
    default of ``max(8, cores)``): Ray never places a replica that does not fit, and the deployment
    waited for it without end and without a word (``--num-cpus 1`` for the six demo models)."""
    have = num_cpus if num_cpus is not None else max(8, os.cpu_count() or 1)
    need = round(cpus_asked(app_cfg), 6)  # 0.1 x 3 is not 0.3 in floats
    if need > have:
        where = f"--num-cpus {num_cpus}" if num_cpus is not None else f"the local Ray's {have} logical CPUs"
        raise UsageError(
            f"{where}: the {len(app_cfg['classifiers'])} classifier(s) and the router ask Ray for {need:g} "
            f"logical CPUs (deployment.num_cpus x num_replicas, router.num_cpus); give --num-cpus "
            f"{math.ceil(need)} or more"
        )


def run_demo(
    models: list[str] | None,
    concurrency: int,
    out: Path,
    config_path: Path | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> list[RunMetrics]:
    from serve_app.replay.config import ReplayConfig, ReplayLoad, ReplayOutput
    from serve_app.replay.local import local_serve
    from serve_app.replay.results import load_run, run_metrics
    from serve_app.replay.runner import replay_url

    app_cfg = demo_app_config(config_path, models)
    ids = [c["id"] for c in app_cfg["classifiers"]]
    try:
        cfg = ReplayConfig(
            models=ids,
            data=demo_replay_data(app_cfg),
            load=ReplayLoad(concurrency=concurrency),
            output=ReplayOutput(out=str(out), run_name=demo_run_name(), progress=progress),
        )
    except ValidationError as exc:
        raise config_error("", exc, {}) from None
    check_cpus(app_cfg, num_cpus)
    _make_out(out)
    with local_serve(app_cfg, num_cpus=num_cpus) as url:
        folders = asyncio.run(replay_url(cfg, url))
    rows = []
    for f in folders:
        _, mean = run_metrics(load_run(f))
        if mean is not None:
            rows.append(mean)
    return rows


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="deploy the six study models locally, replay the demo test set, print accuracy and energy",
        description=__doc__,
    )
    add_models_argument(p, "a subset of the models in deployments/local.yaml")
    p.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight (closed loop)")
    p.add_argument(
        "--out", type=Path, default=None, help="keep the run folders here (default: a temporary folder)"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="an AppConfig or Serve config YAML (default: local.yaml)"
    )
    p.add_argument("--num-cpus", type=positive_int, default=None, help="logical CPUs for the local Ray")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with sigterm_unwinds():  # SIGTERM, like Ctrl-C, removes the temporary folder and stops the local Ray
        out = args.out or Path(tempfile.mkdtemp(prefix="accuwatt-demo-"))
        try:
            rows = run_demo(args.models, args.concurrency, out, args.config, args.num_cpus, args.progress)
        finally:
            if args.out is None:
                shutil.rmtree(out, ignore_errors=True)
    print()
    print(format_table(rows))
    scopes = sorted({m.energy_scope for m in rows})
    print(
        f"\nJ/request covers: {'; '.join(scopes)} (model+serving: the classifier replica plus its share of the router and HTTP proxy)"
    )
    if any(not m.measured for m in rows):
        print(
            "\n'estimate': no energy sensor was readable; figures are CPU time x per-core power + memory "
            "x W/GB, not measurements."
        )
    if args.out is not None:
        print(f"\nrecords and metrics: {args.out}  (accuwatt report {args.out})")
    return 0 if rows and all(m.n_errors == 0 for m in rows) else 1
