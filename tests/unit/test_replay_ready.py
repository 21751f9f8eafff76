"""The replay driver's readiness wait against a URL where nothing listens: it says what it waits for."""

from __future__ import annotations

import socket

import pytest

from serve_app.replay.ready import NotReadyError, wait_ready_sync


def test_a_url_where_nothing_listens_is_named_while_the_wait_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:  # a free loopback port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NotReadyError, match="was not ready within 7 s"):
        wait_ready_sync(f"http://127.0.0.1:{port}", timeout_s=7.0)
    err = capsys.readouterr().err
    assert f"waiting up to 7 s for http://127.0.0.1:{port}/readyz (last: ConnectError)" in err, err
    assert err.count("waiting") == 1  # said once, not at every poll
