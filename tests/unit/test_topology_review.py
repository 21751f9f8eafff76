"""``accuwatt cluster up|down|status`` review findings: the private state folder (refused, never
chmod-ed or taken for "no cluster"), ``status`` from the private record, the printed exports, and a
local cluster's start that fails part way. Nothing here starts Ray: Ray's own ``Cluster`` (the nodes)
is replaced by a recorder where a start must get that far, and refuses otherwise."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_app.cli import main
from serve_app.topology.cli import STATE_DIR_ENV, export_line, state_dir, write_record
from serve_app.topology.local_cluster import LocalCluster, NodeSpec
from tests.unit.guards import cluster_env_restored, forbid_ray, one_error

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Ray start (a guard), and the environment a local cluster's start sets given back after."""
    forbid_ray(monkeypatch)
    with cluster_env_restored(monkeypatch):
        yield


# -- 11: the state folder -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["up", "status", "down"])
def test_a_file_as_the_state_folder_is_one_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    (tmp_path / "state").write_text("")
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    assert "is not a folder" in one_error(capsys, ["cluster", command])  # before: traceback / "none"


@pytest.mark.parametrize("command", ["up", "status", "down"])
def test_a_loose_state_folder_is_refused_and_left_as_it_is(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    d = tmp_path / "state"
    d.mkdir()
    d.chmod(0o755)
    monkeypatch.setenv(STATE_DIR_ENV, str(d))
    assert "mode 0755" in one_error(capsys, ["cluster", command])
    assert stat.S_IMODE(d.stat().st_mode) == 0o755  # before: chmod-ed to 0700, even by `status`


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
@pytest.mark.parametrize("command", ["up", "status", "down"])
def test_another_users_state_folder_is_one_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, -1)
    monkeypatch.setenv(STATE_DIR_ENV, str(d))
    assert "another user" in one_error(capsys, ["cluster", command])


def test_status_and_down_make_no_folder_and_up_makes_a_private_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    d = tmp_path / "a" / "state"
    monkeypatch.setenv(STATE_DIR_ENV, str(d))
    for command in ("status", "down"):
        assert main(["cluster", command]) == 1
        assert "no cluster" in capsys.readouterr().err
    assert not d.exists()
    assert state_dir() == d and stat.S_IMODE(d.stat().st_mode) == 0o700


# -- 13: status from the private record -----------------------------------------------------------


def test_status_prints_the_recorded_cluster_after_its_session_folder_is_gone(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    cluster = {
        "address": "127.0.0.1:41234",
        "temp_dir": str(tmp_path / "awc-gone"),  # never made: status must not need it
        "auth": "disabled",
        "nodes": [{"name": "head", "num_cpus": 4, "num_gpus": 0, "metrics_port": 45001}],
        "launcher_pid": os.getpid(),
    }
    record = write_record(cluster, os.getpid())  # this test's process stands for the live launcher
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert main(["cluster", "status"]) == 0  # before: FileNotFoundError on <temp_dir>/cluster.json
    printed = capsys.readouterr()
    assert json.loads(printed.out) == cluster  # stdout is the record alone, for scripts
    assert "node head: 4 CPUs, 0 GPUs, metrics 127.0.0.1:45001" in printed.err
    assert "export RAY_ADDRESS=127.0.0.1:41234 " in printed.err


@pytest.mark.parametrize(("make", "expect"), [("dir", "cannot be read"), ("junk", "not a cluster record")])
def test_an_unreadable_record_is_one_error_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make: str,
    expect: str,
) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    if make == "dir":
        (d / "cluster.json").mkdir()
    else:
        (d / "cluster.json").write_text("[1, 2")
    monkeypatch.setenv(STATE_DIR_ENV, str(d))
    assert expect in one_error(capsys, ["cluster", "status"])  # before: "no cluster ... is recorded"


# -- 17: the exports ------------------------------------------------------------------------------


def test_the_export_line_gives_the_address() -> None:
    line = export_line("127.0.0.1:41234", "token")
    assert (
        line == "export RAY_ADDRESS=127.0.0.1:41234 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token"
    )


# -- 12: a start that fails part way --------------------------------------------------------------


class NodesThatNeverComeUp:
    """Stands in for Ray's ``ray.cluster_utils.Cluster``: the head and workers "start", then waiting
    for them fails (a timeout, or Ctrl-C)."""

    calls: list[str] = []
    temp_dirs: list[str] = []
    error: type[BaseException] = TimeoutError

    def __init__(self, **kwargs: Any) -> None:
        self.address = "127.0.0.1:1"

    def add_node(self, **kwargs: Any) -> None:
        self.calls.append("node")
        if "temp_dir" in kwargs:
            self.temp_dirs.append(kwargs["temp_dir"])

    def wait_for_nodes(self, timeout: float) -> None:
        raise self.error("the nodes did not come up")

    def shutdown(self) -> None:
        self.calls.append("shutdown")


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> type[NodesThatNeverComeUp]:
    import ray.cluster_utils

    NodesThatNeverComeUp.calls, NodesThatNeverComeUp.temp_dirs = [], []
    NodesThatNeverComeUp.error = TimeoutError
    monkeypatch.setattr(ray.cluster_utils, "Cluster", NodesThatNeverComeUp)
    return NodesThatNeverComeUp


def test_a_failed_start_shuts_down_the_nodes_it_started(
    nodes: type[NodesThatNeverComeUp], tmp_path: Path
) -> None:
    cluster = LocalCluster([NodeSpec("head"), NodeSpec("worker-1")], temp_root=str(tmp_path))
    with pytest.raises(TimeoutError):
        cluster.start()
    assert nodes.calls == ["node", "node", "shutdown"]  # before: no shutdown
    assert not Path(cluster.temp_dir).exists()


@pytest.mark.parametrize(("error", "rc"), [(TimeoutError, None), (KeyboardInterrupt, 130)])
def test_cluster_up_leaves_no_nodes_when_the_start_fails_or_is_interrupted(
    nodes: type[NodesThatNeverComeUp],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    error: type[BaseException],
    rc: int | None,
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    nodes.error = error
    if rc is None:
        with pytest.raises(error):
            main(["cluster", "up", "--workers", "1"])
    else:
        assert main(["cluster", "up", "--workers", "1"]) == rc
    assert nodes.calls == ["node", "node", "shutdown"]
    assert nodes.temp_dirs and not any(Path(d).exists() for d in nodes.temp_dirs)
    assert not (tmp_path / "state" / "cluster.json").exists()
