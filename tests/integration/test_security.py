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
ALLOWED_SECRET_KEYS = {"api_key_env", "api_key_file"}  # names of where a secret lives, not secrets
TOKEN = "tok-" + uuid.uuid4().hex
CANARIES = [f"CANARY{uuid.uuid4().hex[:12]}x{i}" for i in range(12)]
LEAKS: list[str] = [TOKEN, *CANARIES]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every mapping entry, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", str(k), v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def config_files() -> list[Path]:
    """Every YAML under deployments/ and cluster/, no exemptions."""
    files = sorted(p for d in ("deployments", "cluster") for p in (REPO / d).rglob("*.y*ml"))
    assert len([f for f in files if f.parent.name == "deployments"]) >= 4 and len(files) >= 8, files
    return files


def serve_configs(doc: Any) -> list[dict[str, Any]]:
    """The Serve configs in a document: itself, or a KubeRay ``serveConfigV2`` string."""
    if isinstance(doc, dict) and "applications" in doc:
        return [doc]
    return [yaml.safe_load(v) for _, k, v in _walk(doc) if k == "serveConfigV2" and isinstance(v, str)]


def ray_auth_settings(doc: Any) -> list[str]:
    """Every Ray auth mode the document sets: KubeRay ``authOptions.mode``, ``RAY_AUTH_MODE`` in a
    container env, and ``RAY_AUTH_MODE=...`` in a start command."""
    found = []
    for _, key, value in _walk(doc):
        if key == "authOptions" and isinstance(value, dict):
            found.append(str(value.get("mode")))
        if isinstance(value, dict) and value.get("name") == "RAY_AUTH_MODE":
            found.append(str(value.get("value")))
        if isinstance(value, str):
            found += re.findall(r"RAY_AUTH_MODE=(\w+)", value)
    return found


def non_loopback_listeners(doc: Any) -> list[str]:
    """What the document binds beyond loopback: Serve ``http_options.host``, ``dashboard-host``."""
    out = []
    for cfg in serve_configs(doc):
        host = str((cfg.get("http_options") or {}).get("host", "127.0.0.1"))  # Serve's default: loopback
        if host not in LOOPBACK:
            out.append(f"serve {host}")
    for _, key, value in _walk(doc):
        if key in ("dashboard-host", "dashboard_host") and str(value) not in LOOPBACK:
            out.append(f"dashboard {value}")
        if isinstance(value, str):
            out += [
                f"dashboard {h}" for h in re.findall(r"--dashboard-host[= ](\S+)", value) if h not in LOOPBACK
            ]
    return out


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_config_listens_only_with_access_control_and_holds_no_secret(path: Path) -> None:
    """Loopback, or the API key required (from a file the config names) and Ray token auth on; Ray
    auth never switched off; no secret inline."""
    doc = yaml.safe_load(path.read_text())
    auth = ray_auth_settings(doc)
    assert "disabled" not in auth, f"{path.name} turns Ray auth off: {auth}"
    for cfg in serve_configs(doc):
        host = str((cfg.get("http_options") or {}).get("host", "127.0.0.1"))
        if host in LOOPBACK:
            continue
        for app in cfg["applications"]:
            router = (app.get("args") or {}).get("router") or {}
            assert router.get("api_key_file"), (
                f"{path.name}: {app['name']} listens on {host} without a key file"
            )
    listeners = non_loopback_listeners(doc)
    if listeners and path.parent.name == "cluster":
        assert auth and set(auth) == {"token"}, f"{path.name} listens on {listeners} without Ray token auth"
    for key_path, key, value in _walk(doc):
        # a scalar under a secret-like name is a secret inline; a mapping (a K8s `secret:` volume
        # reference) or a path-like key (`file_mounts` destinations) only says where one lives
        if SECRET_KEY_RE.search(key) and key not in ALLOWED_SECRET_KEYS and "/" not in key:
            assert isinstance(value, (dict, list)) or value in (None, ""), (
                f"{path.name}: {key_path} looks like a secret"
            )
        if isinstance(value, dict) and SECRET_KEY_RE.search(str(value.get("name", ""))):
            assert "value" not in value, f"{path.name}: {key_path} puts a secret inline (use valueFrom)"


def test_every_cluster_that_listens_is_known_to_the_readme() -> None:
    """The README's security section names each config that listens beyond loopback."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Reliability and security") :]
    section = section[: section.find("\n## ", 4)]
    for path in config_files():
        if non_loopback_listeners(yaml.safe_load(path.read_text())):
            assert path.name in section, f"README's security section does not mention {path.name}"


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
