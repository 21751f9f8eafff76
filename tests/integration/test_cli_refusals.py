"""The command line refuses what it cannot do right, through the real CLI (``python -m serve_app.cli``):
unknown model ids (named, with the ids that exist), one ``--models`` syntax everywhere (spaces or
commas), and a replay whose dataset shares no label with a model (refused before the first request;
a partial overlap warns and is recorded in ``run.json``). Each refusal is one line and exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, traditional_config

KNOWN = "bow-logreg, bow-xgboost, embedding-logreg, embedding-xgboost, tfidf-logreg, tfidf-xgboost"
FAST = ["--splits", "1", "--n-train", "60", "--n-test", "30"]


def cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def refused(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2 and exactly one line on stderr (no traceback) holding every needle."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("accuwatt: error: "), p.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [
        (["evaluate", "--models", "nonsense-model"], "'nonsense-model'"),
        (["evaluate", "--models", "tfidf-logreg,nonsense"], "'nonsense'"),
        (["evaluate", "--models", "tfidf-logreg", "tfidf-logreg,bow-logreg,", "x-y"], "'x-y'"),
        (["train", "--models", "bow-logreg,svm"], "'svm'"),
        (["replay", "--local", "--models", "nonsense-model"], "'nonsense-model'"),
    ],
)
def test_unknown_traditional_model_is_named(argv: list[str], unknown: str, tmp_path: Path) -> None:
    line = refused(cli(*argv, *(["--out", str(tmp_path / "o")] if argv[0] != "evaluate" else [])), unknown)
    assert KNOWN in line
    assert not (tmp_path / "o").exists(), "something was written before the refusal"


def test_demo_and_sweep_check_their_ids(tmp_path: Path) -> None:
    refused(cli("demo", "--models", "tfidf-logreg", "gpt-17"), "'gpt-17'", "local.yaml serves", "bow-logreg")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: s\nmodels: [tfidf-logreg, bow-svm]\ntopologies: [{name: one}]\n", encoding="utf-8"
    )
    refused(cli("sweep", str(sweep), "--out", str(tmp_path / "o")), "'bow-svm'", KNOWN)
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: ok\nmodels: [tfidf-logreg]\ntopologies: [{name: one}, {name: two}]\n")
    refused(cli("sweep", str(ok), "--only", "one,three", "--out", str(tmp_path / "o")), "'three'", "one, two")
    assert not (tmp_path / "o").exists()
    refused(cli("evaluate", "--models", ","), "--models needs at least one id")


def test_models_with_spaces_or_commas_mean_the_same() -> None:
    runs = [
        cli("evaluate", "--models", "tfidf-logreg,bow-logreg", *FAST, "--json"),
        cli("evaluate", "--models", "tfidf-logreg", "bow-logreg", *FAST, "--json"),
        cli("evaluate", "--models", "tfidf-logreg, bow-logreg", *FAST, "--json"),
    ]
    accuracy = []
    for p in runs:
        assert p.returncode == 0, p.stderr[-2000:]
        accuracy.append({s["model"]: s["accuracy_mean"] for s in json.loads(p.stdout)["summary"]})
    assert set(accuracy[0]) == {"tfidf-logreg", "bow-logreg"}, accuracy[0]
    assert accuracy[0] == accuracy[1] == accuracy[2]


# -- replay --url against the real service (labels OFFENSE/OTHER) -------------------------------------
def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def demo_url(serve_http: str, demo_artifacts: Path) -> Any:
    from ray import serve

    from serve_app.app import build_app
    from tests.conftest import wait_http

    serve.run(
        build_app(traditional_config(demo_artifacts, ["tfidf-logreg", "bow-logreg"])),
        name="clilabels",
        route_prefix="/clilabels",
        blocking=False,
    )
    wait_http(serve_http + "/clilabels/healthz")
    yield serve_http + "/clilabels"
    serve.delete("clilabels")


def _requests_seen(url: str) -> int:
    body = httpx.get(f"{url}/v1/energy", timeout=30).json()
    return sum(r["requests"] for d in body["deployments"].values() for r in d["replicas"].values())


def test_replay_url_unknown_model_and_disjoint_labels_refused_before_any_request(
    demo_url: str, tmp_path: Path
) -> None:
    before = _requests_seen(demo_url)
    out = tmp_path / "results"
    refused(
        cli("replay", "--url", demo_url, "--models", "tfidf-logreg,nonsense-model", "--out", str(out)),
        "'nonsense-model'",
        "serves: bow-logreg, tfidf-logreg",
    )
    reviews = _write(
        tmp_path / "reviews.jsonl",
        [("a wonderful film", "positive"), ("dull and too long", "negative")] * 5,
    )
    line = refused(
        cli(
            "replay",
            "--url",
            demo_url,
            "--test-file",
            str(reviews),
            "--models",
            "tfidf-logreg",
            "--out",
            str(out),
        ),
        "'tfidf-logreg'",
        "['OFFENSE', 'OTHER']",
        "['negative', 'positive']",
        "no label in common",
    )
    assert "accuracy" not in line
    assert not list(out.rglob("records.jsonl")), "a refused replay wrote records"
    assert _requests_seen(demo_url) == before, "a refused replay sent requests"


def test_replay_url_partial_label_overlap_warns_and_is_recorded(demo_url: str, tmp_path: Path) -> None:
    mixed = _write(
        tmp_path / "mixed.jsonl",
        [("Du bist ein Idiot", "OFFENSE"), ("Schönes Wetter heute", "OTHER"), ("Kauf jetzt!!!", "SPAM")] * 3,
    )
    out = tmp_path / "results"
    p = cli(
        "replay",
        "--url",
        demo_url,
        "--test-file",
        str(mixed),
        "--models",
        "tfidf-logreg",
        "--out",
        str(out),
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "share only ['OFFENSE', 'OTHER']" in p.stderr and "'SPAM'" in p.stderr, p.stderr[-2000:]
    (run_json,) = list(out.rglob("run.json"))
    check = json.loads(run_json.read_text())["label_check"]
    assert check["status"] == "partial" and check["dataset_only"] == ["SPAM"], check
    assert check["model_labels"] == ["OFFENSE", "OTHER"]


def test_replay_url_matching_labels_are_recorded_as_match(demo_url: str, tmp_path: Path) -> None:
    tweets = _write(tmp_path / "t.jsonl", [("Du bist ein Idiot", "OFFENSE"), ("Schönes Wetter", "OTHER")] * 2)
    out = tmp_path / "results"
    p = cli(
        "replay",
        "--url",
        demo_url,
        "--test-file",
        str(tweets),
        "--models",
        "bow-logreg",
        "--out",
        str(out),
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (run_json,) = list(out.rglob("run.json"))
    assert json.loads(run_json.read_text())["label_check"]["status"] == "match"
