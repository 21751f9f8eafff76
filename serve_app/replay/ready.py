"""Waiting for a router to be ready: ``GET /readyz`` until it answers 200.

``/readyz`` is 503 while a classifier is loading (``/healthz`` is liveness only: the router answers it
long before an LLM replica has loaded). A classifier Serve reports ``failed`` ends the wait at once
with its reason. Any other 4xx is an answer, not "not ready yet" (a 422 from routes FastAPI misreads, a
401 from a wrong key; issue 13's wait sat 600 s on a 422): it ends the wait at once with the status and
the body. The one 4xx that means "not yet" is the Serve proxy's plain-text 404 for a route it has not
learnt yet (``Path '/readyz' not found. Ping ...``). ``/readyz`` answers callers without the API key
too (for probes), so a ready router is then asked for ``/v1/models``: a 4xx there (401 or 403: no key,
or a wrong one, in ``ACCUWATT_API_KEY``; 404: a service with a ``/readyz`` that is no accuwatt router)
ends the wait as well, before a replay finds no models to replay or sends every request into a 4xx.
Nothing listening is told apart from a router that answers but is loading: connections refused (or a
host that does not resolve) for ``refused_s`` on end (30 s: a service may be starting) end the wait
with one line naming the URL, where the long wait (``timeout_s``, 900 s) is for a router that answers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx

from serve_app.replay.client import auth_headers

READY_TIMEOUT_S = 900.0
"""Default wait: a vLLM engine on a few CPU cores can take minutes to load."""
REFUSED_TIMEOUT_S = 30.0
"""Default grace for a URL where nothing accepts connections (a service still starting its proxy)."""
READY_POLL_S = 0.5
READY_SAY_AFTER_S = 5.0
"""A wait longer than this says once, on stderr, what it waits for and what it last heard."""


class NotReadyError(RuntimeError):
    """The router did not become ready: a classifier failed, the wait timed out, or it refused (4xx)."""


REFUSED_STATUSES = frozenset({401, 403})
"""``/v1/models`` answers of a router that refuse this client (its API key)."""


def raise_on_client_error(resp: httpx.Response) -> httpx.Response:
    """Raise `NotReadyError` with the status and body on a 4xx, except the proxy's not-routed-yet 404."""
    code = resp.status_code
    if 400 <= code < 500 and not (code == 404 and resp.text.startswith("Path '")):
        raise NotReadyError(f"GET {resp.request.url} answered {code}: {resp.text[:500]}")
    return resp


async def check_access(client: Any, base_url: str, timeout_s: float) -> None:
    """Raise `NotReadyError` if a ready ``base_url`` answers ``/v1/models`` with a 4xx: 401/403, the API
    key in ``ACCUWATT_API_KEY`` is missing or wrong; another, it is no accuwatt router. No answer, or a
    5xx, is left to the caller's own reads (they retry)."""
    url = base_url.rstrip("/") + "/v1/models"
    try:
        resp = await client.get(url, timeout=timeout_s)
    except httpx.HTTPError:
        return
    code = resp.status_code
    if 400 <= code < 500 and not (code == 404 and resp.text.startswith("Path '")):  # (not routed yet)
        hint = (
            "the router wants its API key: set ACCUWATT_API_KEY to it"
            if code in REFUSED_STATUSES
            else "is it an accuwatt router?"
        )
        raise NotReadyError(f"GET {url} answered {code}: {resp.text[:300]} ({hint})")


def failed_models(body: dict[str, Any]) -> dict[str, str]:
    """``{model: reason}`` of the classifiers a ``/readyz`` body reports ``failed`` (pure); a body of
    another shape (another service's ``/readyz``) reports none."""
    waiting = body.get("not_ready") or {}
    if not isinstance(waiting, dict):
        return {}
    return {
        m: str(s.get("reason"))
        for m, s in waiting.items()
        if isinstance(s, dict) and s.get("state") == "failed"
    }


async def wait_ready(
    client: Any,
    base_url: str,
    timeout_s: float = READY_TIMEOUT_S,
    poll_s: float = READY_POLL_S,
    refused_s: float = REFUSED_TIMEOUT_S,
) -> None:
    """Poll ``base_url/readyz`` (``client``: an httpx.AsyncClient or a ClientPool) until it is 200, at
    most ``timeout_s``; connections refused for ``refused_s`` on end (nothing listens) end it sooner."""
    started = time.monotonic()
    deadline = started + timeout_s
    url = base_url.rstrip("/") + "/readyz"
    last = "no answer"
    told = False
    refused_since: float | None = None  # start of the current run of refused connections
    while True:
        try:
            resp = raise_on_client_error(await client.get(url, timeout=min(10.0, timeout_s)))
            if resp.status_code == 200:
                await check_access(client, base_url, min(10.0, timeout_s))
                return
            body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
            failed = failed_models(body) if isinstance(body, dict) else {}
            if failed:
                raise NotReadyError(f"{base_url}: classifiers failed: {failed}")
            last = f"{resp.status_code} {resp.text[:300]}"
            refused_since = None
        except httpx.ConnectError as exc:  # no listener (or no such host): no answer at all
            last = type(exc).__name__
            now = time.monotonic()
            refused_since = now if refused_since is None else refused_since
            if now - refused_since + poll_s > refused_s and now + poll_s <= deadline:
                reason = " ".join(str(exc).split())  # httpx's own words for a refusal say less
                reason = (
                    "connection refused" if not reason or "connection attempts failed" in reason else reason
                )
                raise NotReadyError(
                    f"nothing answers at {base_url} ({reason}, for {now - refused_since:.0f} s): is the "
                    "service running, on this host and port?"
                ) from None
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
            refused_since = None
        if time.monotonic() + poll_s > deadline:
            raise NotReadyError(f"{base_url} was not ready within {timeout_s:.0f} s (last: {last})")
        if not told and time.monotonic() - started >= READY_SAY_AFTER_S:  # a dead URL is not silent
            limit = timeout_s if refused_since is None else min(timeout_s, refused_s)
            print(f"waiting up to {limit:.0f} s for {url} (last: {last})", file=sys.stderr, flush=True)
            told = True
        await asyncio.sleep(poll_s)


def wait_ready_sync(
    base_url: str, timeout_s: float = READY_TIMEOUT_S, refused_s: float = REFUSED_TIMEOUT_S
) -> None:
    """`wait_ready` with a client of its own, for synchronous callers."""

    async def run() -> None:
        async with httpx.AsyncClient(trust_env=False, headers=auth_headers()) as client:
            await wait_ready(client, base_url, timeout_s, refused_s=refused_s)

    asyncio.run(run())
