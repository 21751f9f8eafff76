"""Fail closed on access, through real Serve: a router whose HTTP proxies listen on anything but
loopback refuses to start without a non-empty API key, and a configured key file that is missing or
empty is an error wherever the router listens.

The non-loopback cases run in a child process with its own Ray and a Serve whose ``http_options.host``
is ``0.0.0.0`` but whose proxies are disabled (``proxy_location: Disabled``): the router learns the host
from the Serve controller exactly as in a real deployment, while nothing here listens on the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, traditional_config

MODEL = "tfidf-logreg"
KEY = "k-" + "7" * 30

CHILD = r"""
import json, os, shutil, sys, tempfile
import ray
from ray import serve
from serve_app.app import build_app

cases, host = json.loads(sys.argv[1]), sys.argv[2]
temp_dir = tempfile.mkdtemp(prefix="aw-acc-", dir="/tmp")
ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
         _temp_dir=temp_dir, namespace="accuwatt-access")
serve.start(proxy_location="Disabled", http_options={"host": host, "port": 18999})
out = {}
for name, cfg in cases.items():
    try:
        serve.run(build_app(cfg), name=name, route_prefix="/" + name, blocking=False)
        out[name] = {"status": serve.status().applications[name].status.value, "error": None}
    except Exception as exc:  # the cause is in the router deployment's status message
        app = serve.status().applications.get(name)
        why = app.deployments["router"].message if app and "router" in app.deployments else ""
        out[name] = {"status": "failed", "error": f"{exc} | {why}"}
    serve.delete(name)
print("RESULT " + json.dumps(out), flush=True)
serve.shutdown()
ray.shutdown()
shutil.rmtree(temp_dir, ignore_errors=True)
"""


def run_child(cases: dict[str, dict[str, Any]], host: str, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases), host],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return dict(json.loads(lines[-1][len("RESULT ") :]))


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    (d / "good").write_text(KEY + "\n")
    (d / "empty").write_text("  \n")
    for p in d.iterdir():
        os.chmod(p, 0o600)
    return {"good": d / "good", "empty": d / "empty", "missing": d / "missing"}


def test_router_bound_off_loopback_needs_a_key(demo_artifacts: Path, key_files: dict[str, Path]) -> None:
    def cfg(**router: Any) -> dict[str, Any]:
        return traditional_config(demo_artifacts, [MODEL], router=router)

    # A key file that is missing or empty fails wherever the router listens: that is the loopback test
    # below (same code path); here, what only a non-loopback host changes. Each case is one app
    # deployment (a failing one takes Serve's three constructor tries), so the cases are few.
    cases = {
        "nokey": cfg(api_key_env="AW_TEST_UNSET_KEY"),
        "blankenv": cfg(api_key_env="AW_TEST_BLANK_KEY"),
        "filekey": cfg(api_key_file=str(key_files["good"])),
    }
    env = {"AW_TEST_BLANK_KEY": "   ", "AW_TEST_GOOD_KEY": KEY}
    got = run_child(cases, "0.0.0.0", env)
    for name in ("nokey", "blankenv"):
        err = got[name]["error"] or ""
        assert got[name]["status"] == "failed", (name, got[name])
        assert "'0.0.0.0' (Serve http_options.host), not loopback" in err, err[-2000:]
        assert "router.api_key_file" in err and "AW_TEST_" in err, err[-2000:]
    assert got["filekey"] == {"status": "RUNNING", "error": None}, got["filekey"]
    assert KEY not in json.dumps(got), "the key leaked into an error"


def test_key_file_missing_or_empty_is_an_error_on_loopback_too(
    serve_http: str, demo_artifacts: Path, key_files: dict[str, Path]
) -> None:
    """On the session's loopback Serve: no key at all serves (loopback, one user), but a key file that is
    configured and missing or empty never means "no auth"."""
    from ray import serve

    from serve_app.app import build_app

    for name, why in (("missing", "cannot be read"), ("empty", "is empty")):
        cfg = traditional_config(demo_artifacts, [MODEL], router={"api_key_file": str(key_files[name])})
        app = f"keyfile-{name}"
        with pytest.raises(RuntimeError, match="Failed to update the deployments \\['router'\\]"):
            serve.run(build_app(cfg), name=app, route_prefix=f"/{app}", blocking=False)
        message = serve.status().applications[app].deployments["router"].message
        assert f"router.api_key_file {str(key_files[name])!r} {why}" in message, message[-2000:]
        serve.delete(app)
    cfg = traditional_config(demo_artifacts, [MODEL], router={"api_key_env": "AW_TEST_UNSET_KEY"})
    serve.run(build_app(cfg), name="nokey-loopback", route_prefix="/nokey-loopback", blocking=False)
    assert serve.status().applications["nokey-loopback"].status.value == "RUNNING"
    serve.delete("nokey-loopback")
