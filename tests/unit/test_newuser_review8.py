"""New-user review 8: what the README's next commands do, without Ray.

`accuwatt monitoring render` / `up` after `accuwatt cluster up` (README, "Clusters and topologies" and
"Monitoring"): the cluster keeps its Ray sessions in a ``/tmp/awc-*`` folder of its own, and the
monitoring commands read ``/tmp/ray``'s latest session unless told otherwise: the rendered config
pointed Prometheus at another Ray's discovery file (on the review machine a `serve run` stopped minutes
before), or refused for want of a session. The record `cluster up` writes names the cluster's folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from serve_app.cli import main
from serve_app.topology.cli import write_record


def _fake_ray(root: Path, port: int) -> Path:
    """A Ray temp dir as a cluster without the dashboard leaves it: a session with a metrics port."""
    session = root / "session_2026-12-05_08-09-13_000000_1"
    session.mkdir(parents=True)
    (root / "session_latest").symlink_to(session)
    (session / f"metrics_export_port_{port}").write_text(str(port))
    return root


def _record_cluster(temp_dir: Path, address: str = "127.0.0.1:42201") -> None:
    """What `accuwatt cluster up` records, with this process as the (running) launcher."""
    cluster = {"address": address, "temp_dir": str(temp_dir), "auth": "disabled", "nodes": []}
    write_record(cluster, os.getpid())


def _rendered_targets(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(["monitoring", "render", *argv]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "ray"]
    (sd,) = job["file_sd_configs"][0]["files"]
    targets: list[str] = json.loads(Path(sd).read_text())[0]["targets"]
    return targets


@pytest.fixture
def cluster_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    state.chmod(0o700)
    monkeypatch.setenv("ACCUWATT_STATE_DIR", str(state))
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def test_render_after_cluster_up_scrapes_that_cluster(
    cluster_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    awc = _fake_ray(cluster_env / "awc-x", 47823)
    _record_cluster(awc)
    targets = _rendered_targets(capsys, ["--work-dir", str(cluster_env / "mon")])
    assert targets == ["127.0.0.1:47823"]


def test_render_with_the_clusters_exports_scrapes_that_cluster(
    cluster_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    awc = _fake_ray(cluster_env / "awc-x", 47824)
    _record_cluster(awc, "127.0.0.1:42202")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:42202")  # as `cluster up` prints it
    assert _rendered_targets(capsys, ["--work-dir", str(cluster_env / "mon")]) == ["127.0.0.1:47824"]


def test_an_explicit_ray_temp_dir_wins_over_the_recorded_cluster(
    cluster_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_cluster(_fake_ray(cluster_env / "awc-x", 47825))
    other = _fake_ray(cluster_env / "ray", 51000)
    argv = ["--ray-temp-dir", str(other), "--work-dir", str(cluster_env / "mon")]
    assert _rendered_targets(capsys, argv) == ["127.0.0.1:51000"]


def test_ray_tmpdir_wins_over_the_recorded_cluster(
    cluster_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _record_cluster(_fake_ray(cluster_env / "awc-x", 47826))
    monkeypatch.setenv("RAY_TMPDIR", str(_fake_ray(cluster_env / "ray", 51001)))
    assert _rendered_targets(capsys, ["--work-dir", str(cluster_env / "mon")]) == ["127.0.0.1:51001"]


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["report", "results", "--country", "FRA"], "accuwatt report"),  # --country is replay's
        (["monitoring", "render", "--bogus"], "accuwatt monitoring render"),
        (["cluster", "status", "--nodes"], "accuwatt cluster status"),
    ],
)
def test_a_flag_the_subcommand_lacks_points_to_the_subcommands_help(
    argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown flag is one line naming the help that lists the subcommand's flags (before: "see
    `accuwatt --help`", which lists none of them)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("accuwatt: error: unrecognized arguments: ") and "\n" not in err
    assert err.endswith(f"(see `{prog} --help`)")
