"""One record per request, appended to ``records.jsonl`` as it happens, and the resume logic.

Durability: every record is one ``os.write`` of a whole line on an ``O_APPEND`` descriptor (so it is
in the kernel as soon as the request finishes and survives SIGKILL) and a background thread
``fsync``s the file every ``fsync_every`` records or ``fsync_interval_s`` seconds (so at most that
small batch is lost on power loss, and the replay loop never blocks on the disk). On open, a torn last line (a crash mid-write) is cut off, and ``done`` lists the keys
``(model, split, request_index)`` already recorded: a rerun of the same command skips those, so every
request ends with exactly one record. Failures are records too (``error`` set), not retried by a
rerun unless it asks (``--retry-failed``: `move_failed_aside` first moves them to
``records.failed.jsonl`` beside it, so their requests are sent again and each still has one record).

Units: seconds (``*_s``), joules (``*_j``); wall-clock times are Unix seconds (``*_unix_s``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from serve_app.errors import UsageError
from serve_app.wire import EnergyTag, WindowRecord

RecordKey = tuple[str, str, int]
RECORD_SCHEMA = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Record(_Frozen):
    """What happened to one request. ``predicted`` is ``None`` when the request failed."""

    schema_version: int = RECORD_SCHEMA
    model: str
    split: str
    request_index: int
    request_id: str
    session: str
    text_ids: list[str]
    gold: list[str]
    predicted: list[str] | None = None
    parsed: list[bool] | None = None
    sent_unix_s: float
    """When the first attempt was sent."""
    scheduled_offset_s: float = 0.0
    """Planned send offset from the start of this session's window (open loop), 0 in a closed loop."""
    latency_s: float | None = None
    """Client-side latency of the attempt that answered."""
    total_s: float
    """From the first send to the final answer or give-up, retries and waits included."""
    server_latency_s: float | None = None
    energy: EnergyTag | None = None
    prompt_tokens: list[int | None] | None = None
    generated_tokens: list[int | None] | None = None
    status: int | None = None
    error: str | None = None
    error_code: str | None = None
    attempts: int = 1

    @property
    def key(self) -> RecordKey:
        return (self.model, self.split, self.request_index)

    @property
    def ok(self) -> bool:
        return self.error is None and self.predicted is not None

    @property
    def done_unix_s(self) -> float:
        return self.sent_unix_s + self.total_s


def read_records(path: Path) -> list[Record]:
    """All complete records in ``path`` (a torn last line is ignored); ``[]`` if there is none."""
    if not path.exists():
        return []
    out: list[Record] = []
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            line = raw.strip()
            if line:
                out.append(Record.model_validate_json(line))
    return out


def audit_path(path: Path) -> Path:
    """Where `move_failed_aside` keeps the failed records it moved out of ``path``
    (``records.jsonl`` -> ``records.failed.jsonl``)."""
    return path.with_name(f"{path.stem}.failed{path.suffix}")


def _complete_lines(path: Path) -> list[bytes]:
    """The complete lines of ``path`` (newline kept; a torn last line is left out)."""
    if not path.exists():
        return []
    with path.open("rb") as f:
        return [raw for raw in f if raw.endswith(b"\n")]


def _failed(path: Path, lines: list[bytes]) -> list[bytes]:
    """The lines among ``lines`` (of ``path``) whose record failed (`Record.ok` false); a line that is
    no record is a `UsageError` naming it (nothing is moved)."""
    out: list[bytes] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = Record.model_validate_json(raw.strip())
        except ValidationError as exc:
            raise UsageError(
                f"{path} line {n} is not a replay record ({exc.errors()[0]['msg']}); "
                "--retry-failed moved nothing: fix or remove that line"
            ) from None
        if not record.ok:
            out.append(raw)
    return out


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_failed(path: Path) -> int:
    """Step 1 of `move_failed_aside`: append the failed records of ``path`` that its audit file
    (`audit_path`) lacks to that file, and fsync it. ``path`` is not touched. Idempotent: a record
    already there (an earlier call cut off before step 2) is not appended again. Returns how many failed
    records ``path`` holds."""
    failed = _failed(path, _complete_lines(path))
    if not failed:
        return 0
    audit = audit_path(path)
    _truncate_torn_tail(audit)  # an append cut off mid-line
    kept = set(_complete_lines(audit))
    new = [raw for raw in failed if raw not in kept]
    if new:
        created = not audit.exists()
        with audit.open("ab") as f:
            f.write(b"".join(new))
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(audit.parent)
    return len(failed)


def drop_saved_failures(path: Path) -> int:
    """Step 2 of `move_failed_aside`: rewrite ``path`` without its failed records that its audit file
    already holds (a record not saved there is kept: this step alone never loses one), atomically: a
    temporary file in the same folder, fsynced, ``os.replace``d over ``path``, the folder fsynced.
    Nothing is written when there is nothing to drop. Returns how many records were dropped."""
    lines = _complete_lines(path)
    saved = set(_complete_lines(audit_path(path)))
    drop = {raw for raw in _failed(path, lines) if raw in saved}
    if not drop:
        return 0
    kept = [raw for raw in lines if raw not in drop]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(b"".join(kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return len(lines) - len(kept)


def move_failed_aside(path: Path) -> int:
    """Move the failed records of ``path`` (``records.jsonl``) to its audit file (`audit_path`,
    appended: retries accumulate there), so that a `RecordStore` opened next lacks their keys and the
    replay sends those requests again. Crash-safe in this order: the failed records are appended to the
    audit file and fsynced (`save_failed`) before ``path`` is replaced by a copy without them
    (`drop_saved_failures`); a crash in between leaves them in both files, and the next call finishes
    the move without appending them twice. Returns how many records were moved (0: nothing written).
    Call it only while the run folder is held (`runner.run_folder_lock`) and no store is open on it."""
    save_failed(path)
    return drop_saved_failures(path)


def _truncate_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class RecordStore:
    """Appends records to one ``records.jsonl``; knows which keys are already done."""

    def __init__(self, path: Path, fsync_every: int = 16, fsync_interval_s: float = 0.5) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(path)
        self.existing: list[Record] = read_records(path)
        self.done: set[RecordKey] = {r.key for r in self.existing}
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync_every = max(1, fsync_every)
        self._fsync_interval_s = fsync_interval_s
        self._unsynced = 0
        self._last_sync_s = time.monotonic()
        self._wake = threading.Event()
        self._closing = False
        self._syncer = threading.Thread(target=self._sync_loop, name="records-fsync", daemon=True)
        self._syncer.start()

    def append(self, record: Record) -> None:
        """Write the record's line now (one ``os.write``); a background thread fsyncs in batches, so
        the caller (the replay's event loop) never waits on the disk."""
        if record.key in self.done:
            raise ValueError(f"request {record.key} is already recorded in {self.path}")
        line = (record.model_dump_json(exclude_none=True) + "\n").encode()
        n = os.write(self._fd, line)
        while n < len(line):  # a short write of a regular file is rare, but finish the line
            n += os.write(self._fd, line[n:])
        self.done.add(record.key)
        self._unsynced += 1
        if (
            self._unsynced >= self._fsync_every
            or time.monotonic() - self._last_sync_s >= self._fsync_interval_s
        ):
            self._unsynced = 0
            self._last_sync_s = time.monotonic()
            self._wake.set()

    def _sync_loop(self) -> None:
        while True:
            self._wake.wait(self._fsync_interval_s)
            self._wake.clear()
            if self._fd >= 0:
                os.fsync(self._fd)
            if self._closing:
                return

    def sync(self) -> None:
        """fsync now (blocking)."""
        os.fsync(self._fd)
        self._unsynced = 0
        self._last_sync_s = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self._closing = True
            self._wake.set()
            self._syncer.join()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def append_window(path: Path, window: WindowRecord) -> None:
    """Append one window line to ``windows.jsonl`` and fsync (a few lines per run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(window.model_dump_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_windows(path: Path) -> list[WindowRecord]:
    """Every complete window line of ``path`` (a torn last line is ignored); ``[]`` if there is none."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        raw = raw.strip()
        if raw:
            try:
                out.append(WindowRecord.model_validate_json(raw))
            except ValueError:
                continue  # a torn last line
    return out
