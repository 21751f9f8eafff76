"""Sixth CLI review: bad input to ``accuwatt replay`` against real HTTP servers on loopback (the echo
router, or a plain server that is no router). Each refusal is one ``accuwatt: error:`` line and a
non-zero status, before a request is sent: a URL where something other than a ready router answers, a
classifier that failed to load, a router that wants an API key (tracebacks, or a run of 401s that exited
0), another service's ``/readyz`` body (a crash), an ``--out`` that is a file (a traceback after the
readiness wait), a flag that the rest of the command line would make the replay ignore (silently
ignored), a ``--run-name`` or ``--topology`` of ``..`` (the run filed in a parent folder). And what the
replay promises of its load: the rate it is given, the concurrency it must not exceed, and its documented
defaults."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serve_app.cli import build_parser, main
from serve_app.replay.cli import config_from_args
from serve_app.replay.echo_server import EchoServer, EchoState
from serve_app.replay.ready import NotReadyError, wait_ready_sync
from serve_app.replay.records import read_records
from tests.unit.guards import forbid_ray, one_error

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

DEMO = ["--dataset", "demo", "--splits", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_ray(monkeypatch)


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str], status: int) -> str:
    """Run ``accuwatt argv``; assert ``status`` and one ``accuwatt: error:`` line on stderr; return it."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == status, err
    assert len(lines) == 1 and lines[0].startswith("accuwatt: error: "), err
    return lines[0]


def plain_server(
    status: int,
    body: bytes,
    content_type: str,
    paths: dict[str, tuple[int, bytes] | tuple[int, bytes, str]] | None = None,
) -> Iterator[str]:
    """An HTTP server on loopback that answers a GET of one of ``paths`` with its status and body (and
    content type, where given), any other with ``status`` and ``body``: no router, or the routes of one
    that a test needs."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, answer, *ctype = (paths or {}).get(self.path, (status, body))
            self.send_response(code)
            self.send_header("Content-Type", ctype[0] if ctype else content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def not_a_router() -> Iterator[str]:
    """A web server that is no router (another service on the port given): 404 on ``/readyz``."""
    yield from plain_server(404, b"<html><body>\n<h1>Not Found</h1>\n</body></html>\n", "text/html")


@pytest.fixture
def failed_router() -> Iterator[str]:
    """A router whose classifier failed to load: ``/readyz`` is 503 and names it ``failed``, with a
    reason of several lines (a Python exception's)."""
    reason = "RuntimeError: artifact missing\n  at load()\n"
    body = json.dumps({"ready": False, "not_ready": {"echo": {"state": "failed", "reason": reason}}})
    yield from plain_server(503, body.encode(), "application/json")


@pytest.fixture
def keyed_router() -> Iterator[str]:
    """A ready router with an API key, asked without it: ``/readyz`` answers anyone (the README's
    "Fail closed"), ``/v1/models`` and the rest answer 401."""
    refusal = json.dumps({"error": {"code": "unauthorized", "message": "missing or invalid API key"}})
    ready = json.dumps({"status": "ready", "not_ready_count": 0}).encode()
    yield from plain_server(401, refusal.encode(), "application/json", {"/readyz": (200, ready)})


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer(EchoState(delay_s=0.02)) as server:
        yield server


# -- 1: a URL that answers but is no ready router: one line, not a traceback -------------------------


def test_a_url_where_no_router_answers_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, not_a_router: str
) -> None:
    out = tmp_path / "out"
    line = error_line(capsys, ["replay", "--url", not_a_router, *DEMO, "--out", str(out)], 1)
    assert "/readyz" in line and "404" in line, line
    assert not out.exists()  # nothing recorded, nothing that could read as a run


def test_a_classifier_that_failed_to_load_is_named_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, failed_router: str
) -> None:
    out = tmp_path / "out"
    line = error_line(capsys, ["replay", "--url", failed_router, *DEMO, "--out", str(out)], 1)
    assert "classifiers failed" in line and "echo" in line and "artifact missing" in line, line
    assert not out.exists()


@pytest.mark.parametrize("models", [[], ["--models", "echo"]])
def test_a_router_that_wants_an_api_key_is_named_before_any_request(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keyed_router: str,
    models: list[str],
) -> None:
    """Without its key: no traceback saying the router lists no models, no run of 401s that exits 0."""
    monkeypatch.delenv("ACCUWATT_API_KEY", raising=False)
    out = tmp_path / "out"
    line = error_line(capsys, ["replay", "--url", keyed_router, *DEMO, *models, "--out", str(out)], 1)
    assert "/v1/models" in line and "401" in line and "ACCUWATT_API_KEY" in line, line
    assert not out.exists()


def test_a_service_with_a_readyz_that_is_no_router_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Another service that answers ``/readyz`` (a common probe route): not a traceback saying the
    router lists no models."""
    ready = (200, b'{"status": "ok"}')
    server = plain_server(404, b"404 page not found\n", "text/plain", {"/readyz": ready})
    url = next(server)
    try:
        line = error_line(capsys, ["replay", "--url", url, *DEMO, "--out", str(tmp_path / "out")], 1)
    finally:
        server.close()
    assert "/v1/models" in line and "404" in line and "accuwatt router" in line, line
    assert not (tmp_path / "out").exists()


def test_another_services_not_ready_body_is_waited_on_not_a_crash() -> None:
    """A 503 whose JSON lists what is not ready (not accuwatt's mapping): still "not ready yet"."""
    body = json.dumps({"status": "starting", "not_ready": ["db", "cache"]}).encode()
    server = plain_server(503, body, "application/json")
    url = next(server)
    try:
        with pytest.raises(NotReadyError, match="was not ready within 1 s"):
            wait_ready_sync(url, timeout_s=1.0)
    finally:
        server.close()


# -- 2: an --out that is a file: refused before any request or training -----------------------------


@pytest.mark.parametrize("below", ["", "sub"])
def test_replay_refuses_an_out_that_is_a_file_before_sending(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, echo: EchoServer, below: str
) -> None:
    file = tmp_path / "results"
    file.write_text("not a folder\n")
    out = file / below if below else file
    line = error_line(capsys, ["replay", "--url", echo.url, *DEMO, "--n-test", "4", "--out", str(out)], 2)
    assert "--out" in line and str(file) in line and "not a folder" in line, line
    assert not echo.state.seen  # not one request sent
    assert file.read_text() == "not a folder\n"


def test_a_file_in_the_way_of_a_run_folder_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, echo: EchoServer
) -> None:
    """A file where the dataset's folder under ``--out`` must go: met when the run folder is made."""
    (tmp_path / "demo").write_text("not a folder\n")
    line = error_line(
        capsys, ["replay", "--url", echo.url, *DEMO, "--n-test", "4", "--out", str(tmp_path)], 1
    )
    assert str(tmp_path / "demo") in line and "Not a directory" in line, line
    assert not echo.state.seen


# -- 3: flags the rest of the command line would make the replay ignore ------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--dataset", "demo"], "--dataset"),
        (["--n-test", "50"], "--n-test"),
        (["--n-train", "50"], "--n-train"),
        (["--splits", "3"], "--splits"),
    ],
)
def test_replay_refuses_study_flags_with_a_test_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], named: str
) -> None:
    test_file = str(tmp_path / "no-such-file.jsonl")  # never read: the flags are refused first
    argv = ["replay", "--url", "http://127.0.0.1:1", "--test-file", test_file, *flags]
    line = one_error(capsys, argv)
    assert named in line and "--test-file" in line, line


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--num-cpus", "4"], "--num-cpus"), (["--embedding-model", "/models/minilm"], "--embedding-model")],
)
def test_replay_refuses_local_flags_with_a_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], named: str
) -> None:
    missing = str(tmp_path / "no-such-dataset.csv")  # never read: the flags are refused first
    line = one_error(capsys, ["replay", "--url", "http://127.0.0.1:1", "--dataset", missing, *flags])
    assert named in line and "--local" in line, line


def test_a_test_file_keeps_its_seed_and_text_columns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--seed`` seeds the arrivals and the columns name the file's: both stay allowed."""
    missing = str(tmp_path / "no-such-file.jsonl")
    argv = ["replay", "--url", "http://127.0.0.1:1", "--test-file", missing, "--seed", "3", "--text-col", "t"]
    assert "dataset not found" in one_error(capsys, argv)


@pytest.mark.parametrize(
    ("flag", "name"), [("--run-name", ".."), ("--run-name", "."), ("--run-name", "/.."), ("--topology", "..")]
)
def test_replay_refuses_a_run_or_topology_name_that_is_no_folder_of_its_own(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str, name: str
) -> None:
    """``--run-name ..`` filed the run in ``<out>/<dataset>/<topology>/`` (every model's folder's
    parent; a second model's run the same folder), ``--topology ..`` outside the dataset's folder."""
    missing = str(tmp_path / "no-such-dataset.csv")  # never read: the name is refused first
    line = one_error(capsys, ["replay", "--url", "http://127.0.0.1:1", "--dataset", missing, flag, name])
    assert flag in line and "no folder of its own" in line, line


# -- 4: the documented defaults, the rate and the concurrency ----------------------------------------


def test_replay_defaults_are_the_documented_ones() -> None:
    args = build_parser().parse_args(["replay", "--url", "http://127.0.0.1:1"])
    cfg = config_from_args(args)
    d, load, out = cfg.data, cfg.load, cfg.output
    assert (d.dataset, d.n_train, d.n_test, d.splits, d.seed, d.test_file) == (
        "demo",
        200,
        200,
        10,
        20250101,
        None,
    )
    assert (load.concurrency, load.rate_rps, load.batch_size, load.max_attempts) == (None, None, 1, 6)
    assert load.timeout_s == 300.0 and cfg.load_shape().max_in_flight == 1  # closed loop, one worker
    assert (out.out, out.country, out.codecarbon, out.progress) == ("results", "DEU", False, True)


def _max_overlap(records: list) -> int:  # type: ignore[type-arg]
    """The most requests in flight at once, from each record's send time and total time."""
    edges = sorted(
        [(r.sent_unix_s, 1) for r in records] + [(r.sent_unix_s + r.total_s, -1) for r in records],
        key=lambda e: (e[0], e[1]),
    )
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_replay_at_a_rate_sends_at_that_rate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, echo: EchoServer
) -> None:
    argv = ["replay", "--url", echo.url, *DEMO, "--n-test", "60", "--rate", "40", "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    (records_file,) = tmp_path.rglob("records.jsonl")
    records = sorted(read_records(records_file), key=lambda r: r.scheduled_offset_s)
    assert len(records) == 60 and len(echo.state.answered) == 60
    planned_rps = (len(records) - 1) / records[-1].scheduled_offset_s
    assert 40 * 0.7 < planned_rps < 40 / 0.7, planned_rps  # a Poisson sample of 59 gaps of mean 1/40 s
    t0 = records[0].sent_unix_s
    late = [r.sent_unix_s - t0 - r.scheduled_offset_s for r in records]
    assert max(abs(x) for x in late) < 0.25, late  # each sent at its arrival time


@pytest.mark.parametrize("loop", [["--concurrency", "3"], ["--rate", "500", "--concurrency", "2"]])
def test_replay_never_exceeds_its_concurrency(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, echo: EchoServer, loop: list[str]
) -> None:
    argv = ["replay", "--url", echo.url, *DEMO, "--n-test", "30", *loop, "--out", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    (records_file,) = tmp_path.rglob("records.jsonl")
    records = read_records(records_file)
    assert len(records) == 30
    assert _max_overlap(records) <= int(loop[-1]), _max_overlap(records)
