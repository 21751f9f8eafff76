"""Replay orchestration: test sets from the study protocol, one (model, split) at a time, run folders."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from tqdm import tqdm

from serve_app.carbon import carbon_intensity
from serve_app.data import Dataset, load_dataset, split_identity, study_splits
from serve_app.errors import UsageError
from serve_app.model_ids import check_ids
from serve_app.replay import metadata
from serve_app.replay.client import ClientPool, RetryPolicy, auth_headers, retry_after_s
from serve_app.replay.codecarbon_window import CodeCarbonWindow
from serve_app.replay.config import ReplayConfig
from serve_app.replay.driver import replay_requests
from serve_app.replay.labels import check_labels, compare_labels
from serve_app.replay.plan import TestSet, majority, plan_requests
from serve_app.replay.ready import (
    READY_POLL_S,
    READY_TIMEOUT_S,
    REFUSED_TIMEOUT_S,
    NotReadyError,
    wait_ready,
)
from serve_app.replay.records import RecordStore, append_window, move_failed_aside, read_records
from serve_app.replay.results import RECORDS_FILE, RUN_FILE, WINDOWS_FILE, load_run, run_dir, write_metrics
from serve_app.replay.window import cold_meters, energy_delta
from serve_app.wire import (
    CarbonInfo,
    EnergyView,
    ModelEntry,
    ModelList,
    RunInfo,
    Session,
    SplitInfo,
    Topology,
    WindowRecord,
)

METERS_WARM_TIMEOUT_S = 30.0
"""Longest wait for the energy meters' first ticks before the first request (`wait_meters_warm`)."""


def load_test_sets(cfg: ReplayConfig) -> tuple[Dataset, list[TestSet], dict[str, SplitInfo]]:
    """The test sets to replay and what ``run.json`` records about each split."""
    if cfg.data.test_file:
        ds = load_dataset(cfg.data.test_file, cfg.data.text_col, cfg.data.label_col)
        pool = ds.pool or ds.test
        assert pool is not None
        key = "file-" + ds.fingerprint[:8]
        ts = TestSet(key, tuple(f"{pool.name}:{i}" for i in range(len(pool))), pool.texts, pool.labels, None)
        return (
            ds,
            [ts],
            {key: SplitInfo(dataset=ds.name, fingerprint=ds.fingerprint, test_file=cfg.data.test_file)},
        )
    ds = load_dataset(cfg.data.dataset, cfg.data.text_col, cfg.data.label_col)
    tests: list[TestSet] = []
    meta: dict[str, SplitInfo] = {}
    for sp in study_splits(ds, cfg.data.n_train, cfg.data.n_test, cfg.data.splits, cfg.data.seed):
        maj = majority(sp.train.labels)
        tests.append(TestSet(sp.key, tuple(sp.test.ids), sp.test.texts, sp.test.labels, maj))
        meta[sp.key] = SplitInfo.model_validate({**split_identity(sp), "majority_label": maj})
    return ds, tests, meta


GET_TIMEOUT_S = 60.0
GET_ATTEMPTS = 5


async def get_ok(
    client: ClientPool | httpx.AsyncClient,
    base_url: str,
    path: str,
    attempts: int = GET_ATTEMPTS,
    timeout_s: float = GET_TIMEOUT_S,
) -> httpx.Response | None:
    """GET ``path``; 5xx answers and transport errors are retried after ``Retry-After`` (at most
    ``attempts`` tries, ``timeout_s`` each). The 200 answer, or None if it never answers 200."""
    for attempt in range(attempts):
        retry = 1.0
        try:
            resp = await client.get(base_url.rstrip("/") + path, timeout=timeout_s)
            if resp.status_code == 200:
                return resp
            if resp.status_code < 500:
                return None
            retry = retry_after_s(resp.headers.get("retry-after"), 1.0)
        except httpx.HTTPError:
            pass
        if attempt + 1 < attempts:
            await asyncio.sleep(retry)
    return None


async def get_json(
    client: ClientPool | httpx.AsyncClient, base_url: str, path: str, attempts: int = GET_ATTEMPTS
) -> dict[str, Any] | None:
    """GET a JSON view (``/v1/energy``) as `get_ok` does; None if it never answers 200 or its body is
    no JSON object."""
    resp = await get_ok(client, base_url, path, attempts)
    if resp is None:
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def parse_model_list(base_url: str, resp: httpx.Response) -> ModelList:
    """A ``/v1/models`` 200 answer as a `ModelList`; a body that is not one (not JSON, no ``models``
    list, rows that are not models: another service on that port) raises `NotReadyError`, one line
    naming the URL and what the body was."""
    where = f"{base_url.rstrip('/')}/v1/models answered 200 but not an accuwatt model list"
    snippet = " ".join(resp.text[:200].split())
    try:
        body = resp.json()
    except ValueError:
        ctype = resp.headers.get("content-type") or "no content-type"
        raise NotReadyError(f"{where}: not JSON ({ctype}): {snippet!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        raise NotReadyError(f"{where}: no 'models' list in {snippet!r}")
    try:
        return ModelList.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise NotReadyError(f"{where}: {loc}: {first['msg']} ({exc.error_count()} problem(s))") from None


async def get_models(client: ClientPool | httpx.AsyncClient, base_url: str) -> ModelList | None:
    """``GET /v1/models`` as a `ModelList`; None if it never answers (a 200 whose body is not a model
    list raises `NotReadyError`: the service is not one this replay can read)."""
    resp = await get_ok(client, base_url, "/v1/models")
    return None if resp is None else parse_model_list(base_url, resp)


async def get_energy(client: ClientPool | httpx.AsyncClient, base_url: str) -> EnergyView | None:
    """``GET /v1/energy`` as an `EnergyView`; None if it never answers (a body that is not one raises)."""
    body = await get_json(client, base_url, "/v1/energy")
    return None if body is None else EnergyView.model_validate(body)


def check_resume(old: RunInfo | None, cfg: ReplayConfig, rdir: Path) -> None:
    """Refuse to resume a run folder whose records were sent under another request plan
    (`ReplayConfig.request_plan`: an explicit ``--run-name`` with another ``--batch-size`` or load
    shape): records are keyed by request index, so the new plan would record texts twice or skip some."""
    if old is None or not read_records(rdir / RECORDS_FILE):
        return
    try:
        was = ReplayConfig.model_validate(old.config).request_plan()
    except ValidationError as exc:  # written by another version of accuwatt
        raise UsageError(
            f"{rdir} holds a run whose replay settings this version cannot read "
            f"({exc.error_count()} problem(s), first: {exc.errors()[0]['loc']}); use another --run-name"
        ) from None
    now = cfg.request_plan()
    if was != now:
        raise UsageError(
            f"{rdir} holds requests sent as {was}, this replay would send {now}: "
            "use the same --batch-size and load shape, or another --run-name"
        )


def previous_run(rdir: Path) -> RunInfo | None:
    """The ``run.json`` a run folder holds already (None in a new folder)."""
    path = rdir / RUN_FILE
    return RunInfo.model_validate_json(path.read_text()) if path.exists() else None


def check_resumes(
    cfg: ReplayConfig, ds: Dataset, models: list[str], listing: ModelList | None, folders: dict[str, Path]
) -> None:
    """`check_resume` for every model whose run folder this replay has not prepared yet, before the
    first request: a refused resume of the second model came after the first model's requests were
    sent and recorded (its folder then held a session that stopped half-way)."""
    for model in models:
        if model not in folders:
            rdir = run_folder(cfg, ds, model, listing)
            check_resume(previous_run(rdir), cfg, rdir)


def _topology_of(cfg: ReplayConfig, model: str, listing: ModelList | None) -> tuple[ModelEntry | None, str]:
    """The model's ``/v1/models`` entry and the topology name its runs are filed under."""
    entry = listing.entry(model) if listing is not None else None
    return entry, cfg.output.topology or metadata.topology_label(entry)


def run_folder(cfg: ReplayConfig, ds: Dataset, model: str, listing: ModelList | None) -> Path:
    """Where ``model``'s run of this replay lives (`results.run_dir`)."""
    _, topology = _topology_of(cfg, model, listing)
    return run_dir(Path(cfg.output.out), ds.name, topology, model, cfg.resolved_run_name(ds.fingerprint))


@contextlib.contextmanager
def run_folder_lock(rdir: Path) -> Iterator[None]:
    """Hold ``rdir`` for one replay (an exclusive ``flock`` on the folder itself, released however
    the replay ends, the process killed included). A second replay of the same run folder at the same
    time (the same command started twice, in another terminal or by a scheduler) is refused: each
    process knows only the records that were there when it opened the file, so both sent and recorded
    the requests neither had done yet (the same 200-request command twice: 262 records, 62 requests
    recorded twice, their energy and texts counted twice in ``metrics.json``). The folder, not its
    ``records.jsonl``: ``--retry-failed`` replaces that file (`records.move_failed_aside`), and a lock on
    the file replaced would no longer hold the new one."""
    rdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(rdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{rdir} is being written by another replay right now (the same command, or one with "
                "the same --run-name): let it finish, or use another --out or --run-name"
            ) from None
        yield
    finally:
        os.close(fd)


def prepare_run_folder(
    cfg: ReplayConfig,
    ds: Dataset,
    split_meta: dict[str, SplitInfo],
    model: str,
    listing: ModelList | None,
    energy: EnergyView | None,
    session: str,
    base_url: str,
) -> Path:
    """Create (or resume, `check_resume`) the model's run folder and write ``run.json`` (sessions
    appended). With ``--retry-failed`` its failed records are moved aside first (`move_failed_aside`:
    the replay then sends their requests again) and the session says how many."""
    entry, topology = _topology_of(cfg, model, listing)
    rdir = run_folder(cfg, ds, model, listing)
    rdir.mkdir(parents=True, exist_ok=True)
    path = rdir / RUN_FILE
    old = previous_run(rdir)
    check_resume(old, cfg, rdir)
    moved = move_failed_aside(rdir / RECORDS_FILE) if cfg.output.retry_failed else None
    ci = carbon_intensity(cfg.output.country)
    info = RunInfo(
        model=model,
        dataset=ds.name,
        dataset_source=ds.source,
        fingerprint=ds.fingerprint,
        labels=list(ds.labels),
        label_check=compare_labels(ds.labels, entry),
        topology_name=topology,
        run=rdir.name,
        config=cfg.model_dump(mode="json"),
        splits={**(old.splits if old else {}), **split_meta},
        carbon=CarbonInfo(country=ci.country, g_per_kwh=ci.g_per_kwh, source=ci.source),
        topology=Topology(
            model=entry,
            gpus=metadata.gpu_count(entry),
            energy=energy.deployments.get(model) if energy is not None else None,
            url=base_url,
        ),
        versions=metadata.versions(),
        git_commit=metadata.git_commit(),
        machine=metadata.machine(),
        created_unix_s=old.created_unix_s if old else time.time(),
        sessions=[
            *(old.sessions if old else []),
            Session(session=session, started_unix_s=time.time(), failed_moved_aside=moved),
        ],
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(info.model_dump_json(indent=2))
    tmp.replace(path)
    return rdir


def run_key(rdir: Path, run_name: str) -> str:
    """What a run folder's request ids are derived from (`plan.request_id`): the run name and the
    folder's first session (kept in ``run.json`` across resumes). A resumed folder sends the ids it sent
    before (a request cut off by a kill is joined or answered from the router's idempotency cache, never
    classified twice); another folder with the same run name (a second measurement, another ``--out``,
    a deleted results folder) sends ids of its own, so the router classifies and meters its requests
    anew instead of answering them from the first run's cache, with the first run's energy tags."""
    info = RunInfo.model_validate_json((rdir / RUN_FILE).read_text())
    return f"{run_name}/{info.sessions[0].session}" if info.sessions else run_name


async def replay_model_split(
    client: ClientPool,
    base_url: str,
    cfg: ReplayConfig,
    model: str,
    test: TestSet,
    rdir: Path,
    session: str,
    run_name: str,
) -> int:
    """Replay one split's test set against one model; returns how many requests were sent."""
    plan = plan_requests(run_key(rdir, run_name), model, test, cfg.load.batch_size)
    with RecordStore(rdir / RECORDS_FILE) as store:
        todo = sum(1 for r in plan if (model, test.split, r.index) not in store.done)
        if todo == 0:
            return 0
        before = await get_energy(client, base_url)
        desc = f"{model} {test.split}"
        # A bar on a terminal; in a log (CI, tee) its carriage-return frames are noise: two lines instead.
        on_tty = sys.stderr.isatty()
        bar = tqdm(
            total=len(plan),
            initial=len(plan) - todo,
            desc=desc,
            unit="req",
            disable=not (cfg.output.progress and on_tty),
            leave=True,
        )
        if cfg.output.progress and not on_tty:
            print(f"{desc}: replaying {todo} of {len(plan)} requests", file=sys.stderr, flush=True)
        tracker = CodeCarbonWindow(cfg.output.country) if cfg.output.codecarbon else None
        if tracker is not None:
            tracker.start()
        try:
            window = await replay_requests(
                client,
                base_url,
                model,
                test.split,
                plan,
                cfg.load_shape(),
                store,
                session,
                _policy(cfg),
                on_done=lambda _r: bar.update(1),
            )
        finally:
            cc = tracker.stop() if tracker is not None else None
            bar.close()
        if cfg.output.progress and not on_tty:
            print(f"{desc}: {window.sent} sent in {window.duration_s:.1f} s", file=sys.stderr, flush=True)
        after = await get_energy(client, base_url)
    append_window(
        rdir / WINDOWS_FILE,
        WindowRecord(
            model=model,
            split=test.split,
            session=session,
            energy_delta=energy_delta(before, after, model),
            codecarbon=cc,
            **asdict(window),  # start_unix_s, end_unix_s, sent, skipped
        ),
    )
    return window.sent


def _policy(cfg: ReplayConfig) -> RetryPolicy:
    return RetryPolicy(max_attempts=cfg.load.max_attempts)


def http_client(cfg: ReplayConfig) -> ClientPool:
    return ClientPool(cfg.load_shape().max_in_flight, cfg.load.timeout_s, auth_headers())


async def wait_meters_warm(
    client: ClientPool | httpx.AsyncClient,
    base_url: str,
    timeout_s: float = METERS_WARM_TIMEOUT_S,
    poll_s: float = READY_POLL_S,
) -> list[str]:
    """Poll ``/v1/energy`` until no node-account share is cold (`window.cold_meters`): a service that
    just became ready has shares that have seen too few ticks to bound a tag's edges (its first
    requests' uncertainty would be the average power x the tick period, 20-60 times the energy, and
    the run's window bound missing). Returns the shares still cold after ``timeout_s`` (the replay goes
    on; their figures carry the looser bound they say)."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        view = await get_energy(client, base_url)
        cold = cold_meters(view) if view is not None else []
        if not cold or time.monotonic() + poll_s > deadline:
            return cold
        if not told:
            print(
                f"waiting for the energy meters' first ticks: {', '.join(cold)}", file=sys.stderr, flush=True
            )
            told = True
        await asyncio.sleep(poll_s)


async def replay_session(
    cfg: ReplayConfig,
    base_url: str,
    ds: Dataset,
    split_meta: dict[str, SplitInfo],
    models: list[str],
    tests: list[TestSet],
    session: str,
    folders: dict[str, Path],
) -> None:
    """The one replay loop (``replay --url``, ``replay --local``, ``sweep``): every model on every test
    set against the router at ``base_url``, split by split. A model's run folder is created (or resumed)
    the first time it is replayed and kept in ``folders``; records already there are skipped. Every
    model's labels are checked against the dataset's before the first request (`check_labels`), and
    its run folder is held (`run_folder_lock`) until the loop ends; every model's resume is checked
    (`check_resumes`) before the first request too. With ``--retry-failed`` a folder's failed records
    are moved aside when it is first prepared (`prepare_run_folder`), once per command: the failures
    of this session's own earlier splits (``--local``, ``sweep``: one call per split) stay."""
    run_name = cfg.resolved_run_name(ds.fingerprint)
    async with http_client(cfg) as client:
        listing = await get_models(client, base_url)
        check_labels(ds.name, ds.labels, listing, models)
        with contextlib.ExitStack() as held:  # every folder, before the first request: `run_folder_lock`
            for model in models:
                held.enter_context(run_folder_lock(folders.get(model) or run_folder(cfg, ds, model, listing)))
            check_resumes(cfg, ds, models, listing, folders)  # every model's, before any request
            await wait_meters_warm(client, base_url)
            for test in tests:
                for model in models:
                    if model not in folders:
                        energy = await get_energy(client, base_url)
                        folders[model] = prepare_run_folder(
                            cfg, ds, split_meta, model, listing, energy, session, base_url
                        )
                    await replay_model_split(
                        client, base_url, cfg, model, test, folders[model], session, run_name
                    )


def finish(folders: dict[str, Path]) -> list[Path]:
    """Write every run folder's metrics; returns the folders."""
    for path in folders.values():
        write_metrics(load_run(path))
    return list(folders.values())


async def replay_url(
    cfg: ReplayConfig,
    base_url: str,
    tests: list[TestSet] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    refused_s: float = REFUSED_TIMEOUT_S,
) -> list[Path]:
    """Replay every model on every split against a running router (waiting for it: `wait_ready`, at
    most ``ready_timeout_s``, ``refused_s`` if nothing listens); returns the run folders."""
    ds, all_tests, split_meta = load_test_sets(cfg)
    async with http_client(cfg) as client:
        await wait_ready(client, base_url, ready_timeout_s, refused_s=refused_s)
        listing = await get_models(client, base_url)
    models = cfg.models or [m.id for m in (listing.models if listing else [])]
    if not models:
        said = "lists none" if listing is not None else "did not answer 200"
        raise NotReadyError(f"no models to replay: none given (--models) and {base_url}/v1/models {said}")
    if listing is not None:
        check_ids(models, [m.id for m in listing.models], f"{base_url} serves")
    folders: dict[str, Path] = {}
    session = uuid.uuid4().hex[:12]
    await replay_session(
        cfg, base_url, ds, split_meta, models, all_tests if tests is None else tests, session, folders
    )
    return finish(folders)
