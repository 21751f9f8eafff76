"""A classifier's batching set in a Serve config file's ``deployments:`` list, through Serve's own
declarative path (``serve run <file>``, as a user runs ``deployments/*.yaml``): the replica applies the
file's ``user_config``; a changed ``user_config`` keeps the replica and takes effect; a bad one fails the
deployment with a message naming the setting. Runs in a subprocess with a Ray of its own: a config
deploy replaces every application of the Serve instance it reaches, and the session's Ray holds others.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.scenario import REPO, run_scenario

MODEL = "bow-logreg"


def _config(artifacts: str, port: int, user_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "accuwatt",
                "route_prefix": "/",
                "import_path": "serve_app.app:build_app",
                "args": {"artifacts_dir": artifacts, "classifiers": [{"kind": "traditional", "id": MODEL}]},
                "deployments": [{"name": MODEL, "user_config": user_config}],
            }
        ],
    }


def _serve_run(gcs: str, path: Path, cfg: dict[str, Any]) -> None:
    """``serve run --non-blocking``: submits the file to the running Serve and returns."""
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    subprocess.run(
        [str(Path(sys.executable).parent / "serve"), "run", "--address", gcs, "--non-blocking", str(path)],
        check=True,
        capture_output=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _scenario(out_path: str) -> None:  # runs in the subprocess
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import httpx
    import psutil
    import ray
    from ray import serve

    from serve_app.ports import free_port
    from tests.conftest import wait_for
    from tests.integration.scenario import trained_demo, wait_200
    from tests.integration.test_scale_in_place import replica_pid_of

    art, _ = trained_demo([MODEL])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = Path(art) / "serve.yaml"
    result: dict[str, Any] = {}

    def pid_applying(want: dict[str, Any]) -> int | None:
        """The classifier's one live replica's PID once its row of ``/v1/energy`` shows ``want``."""
        try:
            view = httpx.get(f"{base}/v1/energy", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return None
        live = [r for r in view["deployments"][MODEL]["replicas"].values() if not r["stale"]]
        return replica_pid_of(live[0]) if len(live) == 1 and live[0].get("batching") == want else None

    def failed_status() -> Any:
        """The deployment once Serve gave up on it (``UNHEALTHY`` comes first, while it retries)."""
        dep = serve.status().applications["accuwatt"].deployments[MODEL]
        return dep if dep.status == "DEPLOY_FAILED" else None

    def refused_as_failed() -> dict[str, Any] | None:
        """A classify answer once the router has read that state (it polls Serve twice a second)."""
        answer = classify()
        return answer if answer["body"].get("error", {}).get("code") == "model_failed" else None

    def classify() -> dict[str, Any]:
        text = "Heute scheint die Sonne."
        r = httpx.post(f"{base}/v1/classify", json={"model": MODEL, "text": text}, timeout=60)
        return {"status": r.status_code, "body": r.json()}

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        gcs = ray.get_runtime_context().gcs_address
        first = {"max_batch_size": 8, "batch_wait_timeout_s": 0.005}
        _serve_run(gcs, path, _config(str(art), port, {"max_batch_size": 8}))
        result["first_pid"] = wait_for(lambda: pid_applying(first), 240, f"batching {first}")
        result["first_started"] = psutil.Process(result["first_pid"]).create_time()
        changed = {"max_batch_size": 5, "batch_wait_timeout_s": 0.01}
        _serve_run(gcs, path, _config(str(art), port, changed))
        result["second_pid"] = wait_for(lambda: pid_applying(changed), 240, f"batching {changed}")
        result["second_started"] = psutil.Process(result["second_pid"]).create_time()
        result["classify"] = classify()
        _serve_run(gcs, path, _config(str(art), port, {"max_batch_size": "many"}))
        dep = wait_for(failed_status, 240, "the deployment to fail on a bad user_config")
        result["bad"] = {"status": str(dep.status), "message": dep.message}
        result["after_bad"] = wait_for(refused_as_failed, 30, "503 model_failed from the router")
        _serve_run(gcs, path, _config(str(art), port, changed))  # the file put right
        with httpx.Client(timeout=10) as c:
            wait_200(c, f"{base}/readyz")
        result["after_fix"] = classify()
        serve.shutdown()
    finally:
        ray.shutdown()
    Path(out_path).write_text(json.dumps(result, default=str))


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("user-config") / "result.json"
    return run_scenario("tests.integration.test_config_file_user_config", out, timeout_s=900)


def test_a_config_files_user_config_reaches_the_replica_and_a_change_keeps_it(result: dict[str, Any]) -> None:
    assert result["first_pid"] is not None
    assert (result["second_pid"], result["second_started"]) == (result["first_pid"], result["first_started"])
    assert result["classify"]["status"] == 200, result["classify"]


def test_a_bad_user_config_in_the_file_fails_the_classifier_naming_the_setting_until_put_right(
    result: dict[str, Any],
) -> None:
    """Serve stops the replica whose ``reconfigure`` refused the value (no replica of the previous
    version is left to serve), so the classifier is down until the file is put right, and says why in
    one line."""
    bad = result.get("bad")
    assert bad is not None, "the deployment never left HEALTHY after a bad user_config"
    assert "user_config {'max_batch_size': 'many'} refused (max_batch_size:" in bad["message"], bad
    after = result["after_bad"]
    assert after["status"] == 503 and after["body"]["error"]["code"] == "model_failed", after
    message = after["body"]["error"]["message"]
    assert "\n" not in message and "\x1b" not in message, message
    assert message.endswith("a classifier's user_config takes max_batch_size and batch_wait_timeout_s only")
    assert result["after_fix"]["status"] == 200, result["after_fix"]
