"""The service over real HTTP on real Ray Serve: every classifier kind, the energy tag, the API."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import pytest

from serve_app.classifiers.traditional import MODEL_IDS
from tests.conftest import traditional_config

GERMAN = [
    "Du bist so ein dummer Idiot, halt die Klappe",
    "Heute scheint in Berlin die Sonne.",
    "Die Regierung hat das Gesetz beschlossen.",
]


@pytest.fixture(scope="module")
def base_url(serve_app_factory_module: str) -> str:
    return serve_app_factory_module


@pytest.fixture(scope="module")
def serve_app_factory_module(serve_http: str, demo_artifacts):  # one app for the whole module
    from ray import serve

    from serve_app.app import build_app

    serve.run(
        build_app(traditional_config(demo_artifacts, MODEL_IDS)),
        name="svc",
        route_prefix="/svc",
        blocking=False,
    )
    from tests.conftest import wait_http

    wait_http(serve_http + "/svc/readyz")
    yield serve_http + "/svc"
    serve.delete("svc")


def test_models_lists_all_six(base_url: str) -> None:
    models = httpx.get(f"{base_url}/v1/models", timeout=30).json()["models"]
    assert sorted(m["id"] for m in models) == sorted(MODEL_IDS)
    for m in models:
        assert m["kind"] == "traditional"
        assert m["labels"] == ["OFFENSE", "OTHER"]
        assert m["energy_source"] in ("rapl", "estimate")
        assert m["parameters"] > 0


def test_replicas_that_reserve_no_gpu_see_none(base_url: str) -> None:
    """Every traditional replica here asks for no GPU: its process must see none. Ray (2.60) leaves an
    actor that asks for none every GPU of its node, so on a GPU node the embedding replicas' encoder
    took one (``cuda`` when visible), unreserved, its energy in the GPU owner's share while ``devices``
    said ``cpu``. The replica's process is the one its meter names (``cpu-process:<pid>``)."""
    import psutil

    models = httpx.get(f"{base_url}/v1/models", timeout=30).json()["models"]
    for m in models:
        (pid,) = [int(d.split(":", 1)[1]) for d in m["energy_devices"] if d.startswith("cpu-process:")]
        env = psutil.Process(pid).environ()
        assert env.get("CUDA_VISIBLE_DEVICES") == "", (m["id"], env.get("CUDA_VISIBLE_DEVICES"))


@pytest.mark.parametrize("model", MODEL_IDS)
def test_classify_each_model(base_url: str, model: str) -> None:
    r = httpx.post(f"{base_url}/v1/classify", json={"model": model, "texts": GERMAN}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["labels"]) == len(GERMAN)
    assert set(body["labels"]) <= {"OFFENSE", "OTHER"}
    energy = body["energy"]
    assert energy["source"] in ("rapl", "estimate")
    assert energy["measured"] is (energy["source"] == "rapl")
    assert energy["joules"] > 0
    assert abs(sum(energy["domains_j"].values()) - energy["joules"]) < 1e-9
    assert energy["attribution"]["rule"] == "texts" and energy["attribution"]["weight"] == len(GERMAN)
    assert r.headers["X-Energy-Source"] == energy["source"]
    assert float(r.headers["X-Energy-Joules"]) == pytest.approx(energy["joules"], rel=1e-6)


def test_single_text_and_client_request_id(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/classify",
        json={"model": "tfidf-logreg", "text": GERMAN[0], "request_id": "abc-1"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.json()["request_id"] == "abc-1" and len(r.json()["labels"]) == 1


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"model": "nope", "text": "x"}, 404, "unknown_model"),
        ({"model": "tfidf-logreg"}, 400, "missing_field"),
        ({"model": "tfidf-logreg", "texts": []}, 400, "empty_texts"),
        ({"model": "tfidf-logreg", "texts": "not a list"}, 400, "wrong_type"),
        ({"model": "tfidf-logreg", "texts": [1, 2]}, 400, "wrong_type"),
        ({"model": 3, "text": "x"}, 400, "wrong_type"),
        ({"model": "tfidf-logreg", "text": "   "}, 400, "empty_text"),
        ({"model": "tfidf-logreg", "text": "x", "mode": "choice"}, 400, "unsupported_mode"),
        (["model", "text"], 400, "wrong_type"),
    ],
)
def test_bad_requests_get_4xx_json(base_url: str, payload: object, status: int, code: str) -> None:
    r = httpx.post(f"{base_url}/v1/classify", json=payload, timeout=30)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


def test_invalid_json(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/classify", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_concurrent_tags_add_up_to_attributed(base_url: str) -> None:
    """N concurrent requests: their tags sum to the attributed joules /v1/energy reports for the
    window (one replica, nothing else running), and metered = attributed + idle."""
    model = "tfidf-xgboost"
    before = httpx.get(f"{base_url}/v1/energy", timeout=30).json()["deployments"][model]

    def one(i: int) -> float:
        r = httpx.post(
            f"{base_url}/v1/classify", json={"model": model, "texts": GERMAN * (1 + i % 3)}, timeout=60
        )
        assert r.status_code == 200
        return float(r.json()["energy"]["model_j"])  # the replica's share; joules adds serving overhead

    with cf.ThreadPoolExecutor(16) as pool:
        tags = list(pool.map(one, range(48)))
    after = httpx.get(f"{base_url}/v1/energy", timeout=30).json()["deployments"][model]
    attributed = after["attributed_j"] - before["attributed_j"]
    assert sum(tags) == pytest.approx(attributed, rel=0.01)
    assert min(tags) >= 0
    assert after["metered_j"] == pytest.approx(after["attributed_j"] + after["idle_j"], rel=1e-9)
    replica = next(iter(after["replicas"].values()))
    assert replica["requests"] >= 48 and replica["open_requests"] == 0


def test_repeated_request_id_is_classified_and_metered_once(base_url: str) -> None:
    model = "bow-xgboost"
    payload = {"model": model, "texts": GERMAN, "request_id": "idem-once-1"}

    def requests_served() -> int:
        snap = httpx.get(f"{base_url}/v1/energy", timeout=30).json()["deployments"][model]
        return sum(r["requests"] for r in snap["replicas"].values() if not r["stale"])

    before = requests_served()
    first = httpx.post(f"{base_url}/v1/classify", json=payload, timeout=60)
    again = httpx.post(f"{base_url}/v1/classify", json=payload, timeout=60)
    assert first.status_code == again.status_code == 200
    assert first.json()["replayed"] is False and again.json()["replayed"] is True
    assert again.json()["labels"] == first.json()["labels"]
    assert again.json()["energy"] == first.json()["energy"]
    assert requests_served() - before == 1
    clash = httpx.post(f"{base_url}/v1/classify", json={**payload, "texts": ["anders"]}, timeout=60)
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "request_id_conflict"


def test_a_client_that_goes_away_leaves_no_request_open(base_url: str) -> None:
    """Serve cancels a request whose client disconnects, in the router and in the replica. Neither may
    keep its energy window open: an open window takes a share of every later interval, so every later
    request's tag would be too small, with no flag."""
    model = "embedding-logreg"
    long = [" ".join(GERMAN) * 6] * 200  # about a second of encoding on two cores
    for _ in range(3):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{base_url}/v1/classify", json={"model": model, "texts": long}, timeout=0.3)
    t0 = time.monotonic()
    while True:  # the cancelled requests end within a few seconds
        view = httpx.get(f"{base_url}/v1/energy", timeout=30).json()
        replicas = [r for r in view["deployments"][model]["replicas"].values() if not r["stale"]]
        open_now = sum(r["open_requests"] for r in replicas) + view["serving_overhead"]["open_requests"]
        if open_now == 0 or time.monotonic() - t0 > 30:
            break
        time.sleep(0.5)
    assert replicas and open_now == 0, view
    r = httpx.post(f"{base_url}/v1/classify", json={"model": model, "texts": GERMAN}, timeout=60)
    assert r.status_code == 200
