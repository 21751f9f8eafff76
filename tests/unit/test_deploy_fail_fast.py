"""``deploy``'s wait loop stops at once on a 4xx (issue 13: it waited 600 s on a 422), except on the Serve
proxy's 404 for a route it has not learnt yet. Real HTTP answers from a loopback server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from serve_app.replay.ready import NotReadyError, raise_on_client_error

pytestmark = pytest.mark.unit
MISSING = b'{"detail":[{"type":"missing","loc":["query","request"],"msg":"Field required"}]}'
ANSWERS = {
    "/v1/models": (422, "application/json", MISSING),
    "/unauthorized": (401, "application/json", b'{"error": {"code": "unauthorized"}}'),
    "/not-routed-yet": (404, "text/plain", b"Path '/not-routed-yet' not found. Ping http://.../-/routes"),
    "/starting": (503, "text/plain", b"starting"),
    "/healthz": (200, "application/json", b'{"status": "ok"}'),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        code, ctype, body = ANSWERS.get(self.path, (404, "application/json", b'{"error": {}}'))
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/v1/models", "/unauthorized", "/elsewhere"])
def test_client_errors_stop_the_wait_with_status_and_body(base_url: str, path: str) -> None:
    resp = httpx.get(base_url + path, trust_env=False)
    with pytest.raises(NotReadyError) as err:
        raise_on_client_error(resp)
    code, _, body = ANSWERS.get(path, (404, "", b'{"error": {}}'))
    assert f"answered {code}: {body.decode()}" in str(err.value)
    assert path in str(err.value)


@pytest.mark.parametrize("path", ["/not-routed-yet", "/starting", "/healthz"])
def test_not_ready_yet_and_ok_pass_through(base_url: str, path: str) -> None:
    resp = httpx.get(base_url + path, trust_env=False)
    assert raise_on_client_error(resp) is resp
