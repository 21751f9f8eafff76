"""``--retry-failed``'s store part: a run folder's failed records move from ``records.jsonl`` to
``records.failed.jsonl`` (audit file first, then an atomic rewrite), and nothing is lost or doubled
when the move is cut off between its two steps. Checked against the files' contents."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from serve_app.data import Dataset, Pool
from serve_app.errors import UsageError
from serve_app.replay.config import ReplayConfig
from serve_app.replay.records import (
    Record,
    RecordStore,
    audit_path,
    drop_saved_failures,
    move_failed_aside,
    save_failed,
)
from serve_app.replay.results import RECORDS_FILE
from serve_app.replay.runner import prepare_run_folder, run_folder_lock
from serve_app.wire import RunInfo

pytestmark = pytest.mark.unit

FAILED = {2: "HTTP 503: replica restarting", 5: "ConnectError: connection refused", 7: "timeout"}


def rec(i: int, session: str = "a", error: str | None = None) -> Record:
    return Record(
        model="m",
        split="s0",
        request_index=i,
        request_id=f"r{i}",
        session=session,
        text_ids=[f"t:{i}"],
        gold=["A"],
        predicted=None if error else ["A"],
        sent_unix_s=100.0 + i,
        total_s=0.5,
        status=503 if error and "503" in error else (200 if not error else None),
        error=error,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True) if path.exists() else []


def _indexes(path: Path) -> list[int]:
    return sorted(json.loads(line)["request_index"] for line in _lines(path))


def _write_run(path: Path, n: int = 10) -> list[str]:
    """``n`` records, those of `FAILED` failed; returns the file's lines."""
    with RecordStore(path) as store:
        for i in range(n):
            store.append(rec(i, error=FAILED.get(i)))
    return _lines(path)


def test_the_failed_records_move_to_the_audit_file_and_the_store_lacks_only_their_keys(tmp_path):
    path = tmp_path / RECORDS_FILE
    before = _write_run(path)
    assert move_failed_aside(path) == len(FAILED)
    assert _indexes(path) == [i for i in range(10) if i not in FAILED]
    assert _indexes(audit_path(path)) == sorted(FAILED)
    # every line is one of the originals, byte for byte, in exactly one of the two files
    assert Counter(_lines(path) + _lines(audit_path(path))) == Counter(before)
    assert [json.loads(x)["error"] for x in _lines(audit_path(path))] == list(FAILED.values())
    with RecordStore(path) as store:
        assert {("m", "s0", i) for i in range(10)} - store.done == {("m", "s0", i) for i in FAILED}
    assert audit_path(path).name == "records.failed.jsonl"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_move_cut_off_after_its_first_step_loses_nothing_and_doubles_nothing(tmp_path):
    """The process dies after the audit file was written and before ``records.jsonl`` was replaced:
    the records are in both files; opened again, the store still has every key (nothing to send
    twice), and the next move finishes without writing the failures into the audit file again."""
    path = tmp_path / RECORDS_FILE
    before = _write_run(path)
    assert save_failed(path) == len(FAILED)  # step 1 only, then the crash
    assert _lines(path) == before
    assert _indexes(audit_path(path)) == sorted(FAILED)
    with RecordStore(path) as store:
        assert store.done == {("m", "s0", i) for i in range(10)}
    assert move_failed_aside(path) == len(FAILED)  # the rerun
    assert Counter(_lines(path) + _lines(audit_path(path))) == Counter(before)
    assert _indexes(audit_path(path)) == sorted(FAILED)


def test_the_second_step_alone_drops_nothing_the_audit_file_lacks(tmp_path):
    path = tmp_path / RECORDS_FILE
    before = _write_run(path)
    assert drop_saved_failures(path) == 0
    assert _lines(path) == before
    assert not audit_path(path).exists()


def test_an_append_to_the_audit_file_cut_mid_line_is_completed(tmp_path):
    path = tmp_path / RECORDS_FILE
    before = _write_run(path)
    torn = [x for x in before if '"request_index":2,' in x][0]
    audit_path(path).write_text(torn[: len(torn) // 2])
    assert move_failed_aside(path) == len(FAILED)
    assert _indexes(audit_path(path)) == sorted(FAILED)
    assert Counter(_lines(path) + _lines(audit_path(path))) == Counter(before)


def test_nothing_failed_nothing_is_written(tmp_path):
    path = tmp_path / RECORDS_FILE
    with RecordStore(path) as store:
        for i in range(4):
            store.append(rec(i))
    was = os.stat(path)
    assert move_failed_aside(path) == 0
    now = os.stat(path)
    assert (now.st_ino, now.st_mtime_ns, now.st_size) == (was.st_ino, was.st_mtime_ns, was.st_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORDS_FILE]


def test_retries_that_fail_again_accumulate_in_the_audit_file(tmp_path):
    path = tmp_path / RECORDS_FILE
    _write_run(path)
    move_failed_aside(path)
    with RecordStore(path) as store:  # the retry: request 5 fails again, the others answer
        for i in sorted(FAILED):
            store.append(rec(i, session="b", error="HTTP 503" if i == 5 else None))
    assert move_failed_aside(path) == 1
    assert _indexes(path) == [i for i in range(10) if i != 5]
    audit = [json.loads(x) for x in _lines(audit_path(path))]
    assert [(r["request_index"], r["session"]) for r in audit] == [(2, "a"), (5, "a"), (7, "a"), (5, "b")]


def test_a_line_that_is_no_record_is_one_line_and_nothing_moves(tmp_path):
    path = tmp_path / RECORDS_FILE
    _write_run(path, n=3)
    with path.open("a") as f:
        f.write('{"model": "m"}\n')
    before = path.read_bytes()
    with pytest.raises(UsageError, match=r"records.jsonl line 4 is not a replay record") as info:
        move_failed_aside(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert not audit_path(path).exists()


def test_the_folder_stays_held_after_its_records_file_is_replaced(tmp_path):
    """The lock is on the folder: one on ``records.jsonl`` would hold the file the move replaced, and
    a second replay would take the new file's."""
    rdir = tmp_path / "run"
    rdir.mkdir()
    _write_run(rdir / RECORDS_FILE)
    with run_folder_lock(rdir):
        assert move_failed_aside(rdir / RECORDS_FILE) == len(FAILED)
        with pytest.raises(UsageError, match="being written by another replay"), run_folder_lock(rdir):
            pass
    with run_folder_lock(rdir):  # released: the next replay may go
        pass


def _cfg(tmp_path: Path, retry: bool) -> ReplayConfig:
    return ReplayConfig.model_validate(
        {
            "output": {
                "out": str(tmp_path),
                "run_name": None,
                "topology": "cpu",
                "progress": False,
                "retry_failed": retry,
            }
        }
    )


def test_the_flag_keeps_the_run_folder_and_the_session_says_what_it_moved(tmp_path):
    ds = Dataset("ds", "test", "f" * 16, None, None, Pool("p", ("a", "b"), ("A", "B")))

    def prepare(retry: bool, session: str) -> Path:
        return prepare_run_folder(_cfg(tmp_path, retry), ds, {}, "m", None, None, session, "http://x")

    rdir = prepare(False, "s1")
    _write_run(rdir / RECORDS_FILE)
    assert prepare(True, "s2") == rdir  # same run name, same request plan: a resume, not refused
    assert prepare(True, "s3") == rdir
    sessions = RunInfo.model_validate_json((rdir / "run.json").read_text()).sessions
    assert [(s.session, s.failed_moved_aside) for s in sessions] == [
        ("s1", None),
        ("s2", len(FAILED)),
        ("s3", 0),
    ]
    assert _indexes(rdir / RECORDS_FILE) == [i for i in range(10) if i not in FAILED]


def test_a_sweep_retries_in_the_run_folders_it_resumes(tmp_path: Path) -> None:
    """``accuwatt sweep --retry-failed`` reaches each topology's replay, whose run name (the folder a
    rerun resumes) does not depend on it."""
    from serve_app.cli import build_parser
    from serve_app.sweep.config import SweepFile
    from serve_app.sweep.runner import _replay_config

    args = build_parser().parse_args(["sweep", "cluster/topologies/cpu-smoke.yaml", "--retry-failed"])
    assert args.retry_failed is True
    assert build_parser().parse_args(["sweep", "cluster/topologies/cpu-smoke.yaml"]).retry_failed is False
    sweep = SweepFile.from_yaml(Path(__file__).resolve().parents[2] / "cluster/topologies/cpu-smoke.yaml")
    topo = sweep.topologies[0]
    retried = _replay_config(sweep, topo, tmp_path, "fp", retry_failed=True)
    plain = _replay_config(sweep, topo, tmp_path, "fp")
    assert retried.output.retry_failed and not plain.output.retry_failed
    assert retried.resolved_run_name("fp") == plain.resolved_run_name("fp")
