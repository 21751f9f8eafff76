"""``procs.scan`` with a title cache, on a ``/proc`` tree the test writes: a process keeps the title it
started with unless it is a Ray worker (an idle worker becomes a replica under the same PID), and a
reused PID (another start time) is read afresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.energy.procs import TitleCache, group_of, scan

pytestmark = pytest.mark.unit


def write_proc(root: Path, pid: int, title: str, start_ticks: int, ppid: int = 1, cpu_ticks: int = 7) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    rest = ["S", str(ppid)] + ["0"] * 9 + [str(cpu_ticks), "0"] + ["0"] * 6 + [str(start_ticks), "0"]
    (d / "stat").write_text(f"{pid} (x y) " + " ".join(rest) + "\n")
    (d / "cmdline").write_bytes(title.replace(" ", "\0").encode() + b"\0")


def test_cached_titles_follow_ray_workers_and_reused_pids(tmp_path: Path) -> None:
    write_proc(tmp_path, 10, "python train.py", 100)
    write_proc(tmp_path, 11, "ray::IDLE", 200)
    write_proc(tmp_path, 12, "", 300)  # a kernel thread: no command line
    titles = TitleCache()
    first = scan(str(tmp_path), titles)
    assert {p: first[p].title for p in first} == {10: "python train.py", 11: "ray::IDLE", 12: ""}

    write_proc(tmp_path, 10, "python edited.py", 100)  # same process: its title is not read again
    write_proc(tmp_path, 11, "ray::ServeReplica:accuwatt:tfidf-logreg", 200)  # the idle worker took a replica
    again = scan(str(tmp_path), titles)
    assert again[10].title == "python train.py"
    assert again[11].title == "ray::ServeReplica:accuwatt:tfidf-logreg"
    assert group_of(again)[11] == "replica:11"

    write_proc(tmp_path, 10, "python other.py", 150)  # PID 10 reused by another process
    (tmp_path / "12" / "stat").unlink()  # PID 12 exited
    (tmp_path / "12" / "cmdline").unlink()
    (tmp_path / "12").rmdir()
    last = scan(str(tmp_path), titles)
    assert last[10].title == "python other.py" and 12 not in last
    assert last[10].cpu_s == pytest.approx(last[11].cpu_s) and last[10].cpu_s > 0
