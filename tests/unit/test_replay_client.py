import asyncio
import json
import random

import httpx
import pytest

from serve_app.replay.client import RetryPolicy, classify, retry_after_s

pytestmark = pytest.mark.unit

OK = {
    "model": "m",
    "labels": ["A"],
    "predictions": [{"label": "A"}],
    "energy": {"joules": 0.5, "source": "rapl", "measured": True},
}


FAST = RetryPolicy(max_attempts=4, backoff_s=0.001, jitter=0.5)


def run(handler, policy=FAST):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await classify(c, "http://x", "m", ["t"], "rid-1", policy, random.Random(0))

    return asyncio.run(go())


def test_retry_after_parsing():
    assert retry_after_s("2", 1.0) == 2.0
    assert retry_after_s("0.25", 1.0) == 0.25
    assert retry_after_s(None, 1.5) == 1.5
    assert retry_after_s("soon", 1.5) == 1.5
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", 1.0, now_unix_s=1445412480.0) == pytest.approx(10.0)
    assert retry_after_s("-3", 1.0) == 0.0


def test_429_is_retried_with_the_same_request_id():
    seen = []

    def handler(request):
        body = json.loads(request.content)
        seen.append(body["request_id"])
        if len(seen) < 3:
            return httpx.Response(
                429 if len(seen) == 1 else 503,
                headers={"Retry-After": "0.01"},
                json={"error": {"code": "busy", "message": "later"}},
            )
        return httpx.Response(200, json=OK)

    out = run(handler)
    assert out.status == 200 and out.attempts == 3 and out.body == OK
    assert seen == ["rid-1"] * 3
    assert out.total_s >= 0.02  # waited at least the two Retry-After periods


def test_other_errors_are_final_and_recorded():
    def handler(request):
        return httpx.Response(400, json={"error": {"code": "unknown_model", "message": "no such model"}})

    out = run(handler)
    assert out.status == 400 and out.attempts == 1 and out.body is None
    assert out.error_code == "unknown_model" and out.error == "no such model"


def test_transport_errors_retry_then_give_up():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("refused")

    out = run(handler)
    assert len(calls) == 4 and out.attempts == 4 and out.status is None
    assert out.error_code == "transport_error" and "gave up" in out.error


def test_energy_view_is_retried_after_503_and_given_up_on_404():
    from serve_app.replay.runner import get_json

    calls = []

    def handler(request):
        calls.append(request.url.path)
        if request.url.path == "/v1/energy" and len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0.01"}, json={"error": {"code": "x"}})
        if request.url.path == "/v1/energy":
            return httpx.Response(200, json={"deployments": {}})
        return httpx.Response(404, json={"error": {"code": "not_found"}})

    async def go(path, attempts=5):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await get_json(c, "http://x/", path, attempts=attempts)

    assert asyncio.run(go("/v1/energy")) == {"deployments": {}}
    assert calls == ["/v1/energy"] * 3
    calls.clear()
    assert asyncio.run(go("/v1/nothing")) is None and calls == ["/v1/nothing"]  # a 4xx is final
    calls.clear()
    assert asyncio.run(go("/v1/energy", attempts=2)) is None and len(calls) == 2  # bounded


def test_a_200_that_is_not_json_is_a_failed_request_and_the_replay_goes_on(tmp_path):
    """A proxy's HTML page (or a JSON that is no object) with status 200: one failed record per
    request, code ``malformed_answer``, and every planned request is still sent."""
    from serve_app.replay.driver import LoadShape, replay_requests
    from serve_app.replay.plan import TestSet, plan_requests
    from serve_app.replay.records import RecordStore, read_records

    html = run(lambda request: httpx.Response(200, text="<html>ok</html>"))
    assert html.status == 200 and html.body is None and html.attempts == 1
    assert html.error_code == "malformed_answer" and "<html>ok</html>" in html.error
    listed = run(lambda request: httpx.Response(200, json=["A"]))
    assert listed.body is None and listed.error_code == "malformed_answer"

    async def replay():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>ok</html>"))
        ts = TestSet("s0", ("t:0", "t:1", "t:2"), ("x", "y", "z"), ("A", "B", "A"))
        async with httpx.AsyncClient(transport=transport) as c:
            with RecordStore(tmp_path / "records.jsonl") as store:
                plan = plan_requests("r", "m", ts)
                await replay_requests(c, "http://x", "m", "s0", plan, LoadShape(), store, "a", FAST)

    asyncio.run(replay())
    recs = read_records(tmp_path / "records.jsonl")
    assert [r.request_index for r in recs] == [0, 1, 2]
    assert all(not r.ok and r.status == 200 and r.error_code == "malformed_answer" for r in recs)
