"""The router's routes as a Ray Serve replica builds them, on any FastAPI.

Serve ships the ingress class to the replica with cloudpickle, and FastAPI >= 0.137 computes each route's
dependant there, lazily, from the unpickled endpoint. With string annotations (``from __future__ import
annotations``) the unpickled functions could not resolve ``Request`` and every route but /healthz answered
422 (issue 13). These tests recompute the dependants from the unpickled endpoints with FastAPI's own
``get_dependant``, which is what the newest FastAPI does, so they catch that on the FastAPI the test venv
has too (an older one that computed the dependants before pickling)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.dependencies.utils import get_dependant
from ray import cloudpickle

from serve_app.router import Router

pytestmark = pytest.mark.unit
ROUTES = {"healthz", "readyz", "models", "energy", "classify"}


def replica_endpoints() -> dict[str, Callable[..., Any]]:
    """The route endpoints of the ingress class as a replica unpickles it (Ray marks each with ``_serve_cls``)."""
    cls = cloudpickle.loads(cloudpickle.dumps(Router.func_or_class))
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        found.update({n: f for n, f in vars(klass).items() if hasattr(f, "_serve_cls")})
    return found


def test_every_route_is_found() -> None:
    assert set(replica_endpoints()) == ROUTES


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_replica_dependant_has_no_client_parameters(name: str) -> None:
    """``self`` comes from Serve's dependency, ``request`` is the Starlette request; nothing is a query,
    header, cookie or body parameter a client would have to send."""
    endpoint = replica_endpoints()[name]
    dep = get_dependant(path="/", call=endpoint)
    client_params = [
        p.name for p in (*dep.query_params, *dep.header_params, *dep.cookie_params, *dep.body_params)
    ]
    assert client_params == [], f"{name}: FastAPI takes {client_params} from the client"
    assert [d.name for d in dep.dependencies] == ["self"]
    takes_request = "request" in endpoint.__signature__.parameters
    assert dep.request_param_name == ("request" if takes_request else None)
    assert takes_request == (name != "healthz")
