"""``accuwatt replay``: replay a dataset's test texts through the router and record every request."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serve_app.argtypes import (
    check_output_folder,
    config_error,
    http_url,
    non_negative_int,
    positive_float,
    positive_int,
    require_package,
)
from serve_app.carbon import carbon_intensity
from serve_app.errors import UsageError
from serve_app.model_ids import add_models_argument
from serve_app.monitoring.flags import host_port
from serve_app.replay.config import ReplayConfig, ReplayData, ReplayLoad, ReplayOutput
from serve_app.replay.ready import READY_TIMEOUT_S, REFUSED_TIMEOUT_S
from serve_app.replay.results import load_run

log = logging.getLogger("accuwatt.replay")

DEFAULT_EMBEDDING_MODEL = "packaged:all-MiniLM-L6-v2"


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    """Dataset, protocol, load-shape and output options (shared with ``accuwatt demo``)."""
    d, load, out = ReplayData(), ReplayLoad(), ReplayOutput()
    g = p.add_argument_group("data and protocol")
    g.add_argument("--dataset", help=f"path, 'demo' or a Hugging Face id (default: {d.dataset})")
    g.add_argument("--text-col", default=d.text_col)
    g.add_argument("--label-col", default=d.label_col)
    add_models_argument(g, "model ids (default: all served)")
    g.add_argument("--n-train", type=positive_int, help=f"training texts per split (default: {d.n_train})")
    g.add_argument("--n-test", type=positive_int, help=f"test texts per split (default: {d.n_test})")
    g.add_argument(
        "--splits", type=positive_int, help=f"study splits, the same for every model (default: {d.splits})"
    )
    g.add_argument("--seed", type=non_negative_int, default=d.seed)
    g.add_argument(
        "--test-file",
        help="replay this file's texts as they are (no splits, no training; not with --dataset, --n-train, "
        "--n-test or --splits)",
    )
    g = p.add_argument_group("load shape")
    g.add_argument(
        "--concurrency", type=positive_int, help="closed loop: workers (default 1); open loop: max in flight"
    )
    g.add_argument("--rate", type=positive_float, dest="rate_rps", help="open loop: mean requests per second")
    g.add_argument(
        "--arrivals",
        choices=["poisson", "gamma"],
        help=f"open loop (with --rate): the arrival process (default: {load.arrivals})",
    )
    g.add_argument(
        "--burstiness",
        type=positive_float,
        help=f"open loop (with --rate): gamma shape (1 = Poisson, <1 burstier; default: {load.burstiness:g})",
    )
    g.add_argument("--batch-size", type=positive_int, default=load.batch_size, help="texts per request")
    g.add_argument(
        "--max-attempts",
        type=positive_int,
        default=load.max_attempts,
        help="per request, 429/503 and transport errors",
    )
    g.add_argument("--timeout-s", type=positive_float, default=load.timeout_s)
    g = p.add_argument_group("output")
    g.add_argument("--out", default=out.out, help="results root: <out>/<dataset>/<topology>/<model>/<run>/")
    g.add_argument("--run-name", help="default: derived from protocol and load shape (a rerun resumes)")
    g.add_argument("--topology", help="topology folder name (default: cpu / <n>gpu from /v1/models)")
    g.add_argument(
        "--country", default=out.country, help="ISO alpha-3 for the grid carbon intensity (default DEU)"
    )
    g.add_argument("--codecarbon", action="store_true", help="also run CodeCarbon around each replay window")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument(
        "--retry-failed",
        action="store_true",
        help="resuming a run folder: send again the requests whose records failed (a 503, a timeout, a "
        "connection error); their records move to records.failed.jsonl beside records.jsonl, which keeps "
        "one record per request, the new one (a new run folder has none: nothing to retry)",
    )


FLAGS = {"rate_rps": "--rate"}
"""Config fields whose flag is not ``--field-name``."""


OPEN_LOOP_ONLY = {"arrivals": "--arrivals", "burstiness": "--burstiness"}
"""Flags that shape open-loop arrivals only: without ``--rate`` the replay is closed loop and they
would be ignored."""

STUDY_ONLY = {"dataset": "--dataset", "n_train": "--n-train", "n_test": "--n-test", "splits": "--splits"}
"""Flags of the study protocol: ``--test-file`` replays one file as it is, and would ignore them."""

LOCAL_ONLY = {"embedding_model": "--embedding-model", "num_cpus": "--num-cpus"}
"""Flags of the models and Ray that ``--local`` starts: with ``--url`` they would be ignored."""

URL_ONLY = {"ready_timeout": "--ready-timeout", "connect_timeout": "--connect-timeout"}
"""Flags of the wait for the service at ``--url``: ``--local`` deploys its own and would ignore them."""


def refuse_ignored_flags(given: dict[str, Any]) -> None:
    """Refuse (`UsageError`) a flag the rest of the command line would make the replay ignore
    (``given``: the flags set, by field name), rather than run something other than what was asked."""
    if given.get("rate_rps") is None:
        for field, flag in OPEN_LOOP_ONLY.items():
            if field in given:
                raise UsageError(
                    f"{flag} shapes open-loop arrivals and needs --rate (requests per second); "
                    "without --rate the replay is closed loop (--concurrency workers)"
                )
    if "burstiness" in given and given.get("arrivals") != "gamma":
        raise UsageError("--burstiness is the gamma shape and needs --arrivals gamma (Poisson has none)")
    if "test_file" in given:
        for field, flag in STUDY_ONLY.items():
            if field in given:
                raise UsageError(
                    f"{flag} sets the study's splits, but --test-file replays its file as it is (no splits, "
                    "no training): give one or the other"
                )
    if not given.get("local"):
        for field, flag in LOCAL_ONLY.items():
            if field in given:
                raise UsageError(
                    f"{flag} is for the models and Ray that --local starts; --url uses the service's"
                )
    if given.get("local"):
        for field, flag in URL_ONLY.items():
            if field in given:
                raise UsageError(f"{flag} is the wait for the service at --url; --local deploys its own")


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    """Build the typed config from parsed arguments (the namespace is only read); each argument goes
    to the part that declares it. A flag the others would make the replay ignore (an open-loop flag
    without ``--rate``, a study flag with ``--test-file``, a ``--local`` flag with ``--url``) is refused
    (`UsageError`)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    refuse_ignored_flags(given)

    def part(model: type[ReplayData] | type[ReplayLoad] | type[ReplayOutput]) -> dict[str, Any]:
        return {k: v for k, v in given.items() if k in model.model_fields}

    try:
        return ReplayConfig.model_validate(
            {
                "models": given.get("models") or [],
                "data": part(ReplayData),
                "load": part(ReplayLoad),
                "output": part(ReplayOutput),
            }
        )
    except ValidationError as exc:  # a value the flags' own checks let through
        raise config_error("", exc, FLAGS) from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a dataset through the service, one record per request", description=__doc__
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--url", type=http_url, help="base URL of a running router, e.g. http://127.0.0.1:8000"
    )
    target.add_argument(
        "--local",
        action="store_true",
        help="per split: train the models on the split's training texts, deploy them on a "
        "local Ray, replay, tear down",
    )
    p.add_argument(
        "--embedding-model", help=f"--local: embedding models (default: {DEFAULT_EMBEDDING_MODEL})"
    )
    p.add_argument(
        "--num-cpus", type=positive_int, default=None, help="--local: logical CPUs for the local Ray"
    )
    p.add_argument(
        "--ready-timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help=f"--url: how long to wait for a router that answers but is still loading its classifiers "
        f"(/readyz 503; default: {READY_TIMEOUT_S:g}, an LLM can take minutes)",
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help=f"--url: how long connections may be refused (nothing listens there yet) before the replay "
        f"gives up with one line (default: {REFUSED_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--pushgateway",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help="after the run, push each model's per-split and mean metrics to this Prometheus Pushgateway "
        "(the 'replay runs' dashboard); a failed push only warns",
    )
    add_replay_arguments(p)
    p.set_defaults(func=run)


def push_run_metrics(gateway: str, folders: list[Path]) -> bool:
    """Push the runs' metrics to the Pushgateway at ``gateway`` (``host:port``); a failure is one
    warning line, never the run's failure (its folders are complete). True when everything was pushed."""
    from serve_app.monitoring.push import publish_runs

    try:
        publish_runs(gateway, folders)
    except (OSError, http.client.HTTPException) as exc:
        detail = " ".join(str(getattr(exc, "reason", None) or exc).split()) or type(exc).__name__
        log.warning(
            "Pushgateway %s: %s; run metrics not pushed (the run folders are complete)", gateway, detail
        )
        return False
    return True


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg.output.codecarbon:  # before training or sending, not one failed window per run
        require_package("codecarbon", "--codecarbon", "carbon")
    carbon_intensity(cfg.output.country)  # an unknown --country is refused before training or sending
    check_output_folder(cfg.output.out, "--out")
    if args.local:
        from serve_app.replay.local import replay_local

        embedding = args.embedding_model or DEFAULT_EMBEDDING_MODEL
        folders = replay_local(cfg, embedding_model=embedding, num_cpus=args.num_cpus)
    else:
        from serve_app.replay.runner import replay_url

        folders = asyncio.run(
            replay_url(
                cfg,
                args.url,
                ready_timeout_s=args.ready_timeout or READY_TIMEOUT_S,
                refused_s=args.connect_timeout or REFUSED_TIMEOUT_S,
            )
        )
    for f in folders:
        print(f)
    if args.pushgateway:
        push_run_metrics(args.pushgateway, folders)
    failed = [f for f in folders if _every_request_failed(Path(f))]
    for f in failed:
        print(f"accuwatt: error: every request of {f} failed (see its records.jsonl)", file=sys.stderr)
    return 1 if failed else 0


def _every_request_failed(folder: Path) -> bool:
    """Whether the run in ``folder`` has requests and none of them succeeded: its figures are no
    measurement, and a script must not read the replay as done (some failed requests are a result:
    an overload run records them)."""
    records = load_run(folder).records
    return bool(records) and not any(r.ok for r in records)
