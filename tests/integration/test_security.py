"""Security over real HTTP: loopback binding, the optional bearer token, and no request text (or
token) in any log file, metric label or error body."""

from __future__ import annotations

import json
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO, traditional_config, wait_http

MODEL = "tfidf-logreg"
SECRET_KEY_RE = re.compile(
    r"(^|[_-])(api[_-]?key|token|secret|password|passwd|bearer|credentials?)$", re.IGNORECASE
)
NON_LOOPBACK_ALLOWED = {"study-h100.yaml", "study-h100-2node.yaml"}
"""Multi-node study configs, reached from other nodes on purpose: run them with ``ACCUWATT_API_KEY``
set (or ``router.api_key_file``) and a firewall. Any other config must bind loopback."""
ALLOWED_SECRET_KEYS = {"api_key_env", "api_key_file"}  # names of where a secret lives, not secrets
TOKEN = "tok-" + uuid.uuid4().hex
CANARIES = [f"CANARY{uuid.uuid4().hex[:12]}x{i}" for i in range(12)]
LEAKS: list[str] = [TOKEN, *CANARIES]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def serve_configs() -> list[Path]:
    files = sorted((REPO / "deployments").glob("*.y*ml"))
    assert files, "no Serve config under deployments/"
    return files


@pytest.mark.parametrize("path", serve_configs(), ids=lambda p: p.name)
def test_serve_config_binds_loopback_and_holds_no_secret(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    host = (cfg.get("http_options") or {}).get("host", "127.0.0.1")  # Serve's own default is loopback
    if path.name not in NON_LOOPBACK_ALLOWED:
        assert host in ("127.0.0.1", "localhost", "::1"), f"{path.name} binds {host}"
    for key_path, value in _walk(cfg):
        key = key_path.rsplit(".", 1)[-1]
        if SECRET_KEY_RE.search(key) and key not in ALLOWED_SECRET_KEYS:
            assert value in (None, "", {}), f"{path.name}: {key_path} looks like a secret"


@pytest.fixture(scope="module")
def secure_url(
    serve_http: str, demo_artifacts: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from ray import serve

    from serve_app.app import build_app

    key_file = tmp_path_factory.mktemp("secret") / "token"
    key_file.write_text(TOKEN + "\n")
    os.chmod(key_file, 0o600)
    cfg = traditional_config(demo_artifacts, [MODEL], router={"api_key_file": str(key_file)})
    assert TOKEN not in json.dumps(cfg)
    serve.run(build_app(cfg), name="secure", route_prefix="/secure", blocking=False)
    wait_http(serve_http + "/secure/readyz")
    yield serve_http + "/secure"
    serve.delete("secure")


def _requests(base: str, auth: dict[str, str]) -> dict[str, httpx.Response]:
    body = {"model": MODEL, "texts": [CANARIES[0], CANARIES[1] + " du Idiot"]}
    return {
        "models": httpx.get(f"{base}/v1/models", headers=auth, timeout=30),
        "energy": httpx.get(f"{base}/v1/energy", headers=auth, timeout=30),
        "classify": httpx.post(f"{base}/v1/classify", json=body, headers=auth, timeout=30),
    }


def _requests_seen(base: str) -> int:
    energy = httpx.get(f"{base}/v1/energy", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    return sum(r["requests"] for r in energy["deployments"][MODEL]["replicas"].values())


def test_api_key_guards_every_route_but_healthz(secure_url: str) -> None:
    assert httpx.get(f"{secure_url}/healthz", timeout=10).status_code == 200
    ok = _requests(secure_url, {"Authorization": f"Bearer {TOKEN}"})
    assert all(r.status_code == 200 for r in ok.values()), {k: r.status_code for k, r in ok.items()}
    seen = _requests_seen(secure_url)
    for auth in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"X-Api-Key": TOKEN},
    ):
        for route, r in _requests(secure_url, auth).items():
            assert r.status_code == 401, (auth, route, r.status_code)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in r.text
    assert _requests_seen(secure_url) == seen, "a rejected request reached a classifier"
    bad = httpx.post(f"{secure_url}/v1/classify", json={"model": MODEL}, timeout=30)
    assert bad.status_code == 401, "authentication must come before validation"


@pytest.fixture(scope="module")
def open_url(serve_http: str, demo_artifacts: Any) -> Iterator[str]:
    from ray import serve

    from serve_app.app import build_app

    cfg = traditional_config(demo_artifacts, [MODEL], router={"max_text_chars": 200, "max_texts": 4})
    serve.run(build_app(cfg), name="canary", route_prefix="/canary", blocking=False)
    wait_http(serve_http + "/canary/readyz")
    yield serve_http + "/canary"
    serve.delete("canary")


def _files(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            try:
                if stat.S_ISREG(p.lstat().st_mode):
                    yield p
            except OSError:
                continue


def test_texts_never_in_logs_metrics_or_errors(
    open_url: str, ray_cluster: dict[str, Any], secure_url: str
) -> None:
    c = CANARIES
    url = f"{open_url}/v1/classify"
    errors: list[httpx.Response] = []
    ok = httpx.post(url, json={"model": MODEL, "texts": [c[2], f"Du {c[3]} bist dumm"]}, timeout=30)
    assert ok.status_code == 200
    assert not any(x in json.dumps(ok.json()["energy"]) for x in c)
    for payload in (
        {"model": MODEL, "texts": [c[4], 17]},  # wrong type next to a canary
        {"model": MODEL, "text": c[5] * 30},  # over max_text_chars
        {"model": MODEL, "texts": [c[6]] * 5},  # over max_texts
        {"model": MODEL, "text": f"{c[7]}\x00"},  # NUL byte
        {"model": c[8], "text": c[8]},  # unknown model named like a text
        {"model": MODEL, "text": c[9], "mode": c[9]},  # unsupported mode
        {"model": MODEL, "text": c[10], f"{c[10]} als Schlüssel": 1},  # unknown field named like a text
        {"model": MODEL, "text": c[11], "request_id": c[11] + "/"},  # bad request id
    ):
        errors.append(httpx.post(url, json=payload, timeout=30))
    errors.append(httpx.post(url, content=f'{{"model": "{MODEL}", "text": "{c[4]}'.encode(), timeout=30))
    errors.append(
        httpx.post(
            url,
            content=f'{{"model": "{MODEL}", "text": "{c[5]}"}}'.encode(),
            headers={"content-type": "text/plain"},
            timeout=30,
        )
    )
    for r in errors:
        assert 400 <= r.status_code < 500, r.text
        assert not any(x in r.text for x in LEAKS), r.text
        assert not any(x in v for x in LEAKS for v in r.headers.values())
    time.sleep(3)  # let replicas, proxy and the metrics agent flush
    metrics = httpx.get(f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics", timeout=30)
    if metrics.status_code == 200:
        assert not any(x in metrics.text for x in LEAKS), "a canary is in a metric label"
    scanned, found = 0, []
    for path in _files(Path(ray_cluster["temp_dir"])):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        found += [f"{path}: {x}" for x in LEAKS if x.encode() in data]
    assert scanned > 10, "the Ray log dir was not found"
    assert not found, found
