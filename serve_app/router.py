"""The HTTP ingress: authenticates, validates, sheds load, routes each request to its classifier
deployment, retries once when a replica dies, and puts the energy tag in the body and the headers.

Error contract (docs/ARCHITECTURE.md): every error is JSON ``{"error": {"code", "message", "field"}}``;
a 5xx also carries ``error_id`` (logged with the cause); 503 carries ``Retry-After``. Overload is a
503, not a 429: the service as a whole is out of capacity (a classifier's bounded queue is full, or
the router holds ``max_inflight`` requests), no client exceeded a quota of its own. Request texts are
never logged nor echoed.

No ``from __future__ import annotations`` here: Ray Serve pickles ``Router``'s methods by value (the name
``Router`` is the deployment, not the class), and cloudpickle keeps only the globals a function's code
names, never those its string annotations name. FastAPI >= 0.137 builds the routes' dependants lazily in
the replica, from those functions, so a string ``"Request"`` there no longer resolves and ``request``
becomes a required query parameter (422 on every route but /healthz). Real annotation objects travel with
the pickled functions. tests/unit/test_router_routes.py checks it on any FastAPI.
"""

import asyncio
import hmac
import ipaddress
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serve_app import registry
from serve_app.backends import Backend, LocalClassifier, RemoteClassifier
from serve_app.classifiers.base import InputRejected
from serve_app.config import RouterConfig
from serve_app.config_common import BatchingOptions, EnergyConfig
from serve_app.deployment import ClassifierHost
from serve_app.energy.agents import node_snapshots
from serve_app.energy.overhead import ServingOverhead
from serve_app.energy.share import AccountShareMeter
from serve_app.energy.tag import add_overhead, single_hop_tag
from serve_app.energy.window import RequestWindow
from serve_app.idempotency import IdempotencyCache, fingerprint
from serve_app.readiness import LOADING_RETRY_AFTER_S, ModelState, ModelStates
from serve_app.timeouts import within
from serve_app.topology.nodes import current_node_id, current_node_name
from serve_app.validation import (
    Limits,
    RequestError,
    check_content_type,
    check_declared_length,
    parse_classify,
)
from serve_app.wire import (
    ClassifyAnswer,
    DeploymentEnergy,
    EnergyTag,
    EnergyView,
    ModelDescription,
    ModelList,
    ReplicaAnswer,
    ReplicaEnergy,
)

log = logging.getLogger("accuwatt.router")
api = FastAPI(
    title="accuwatt", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None
)  # no unauthenticated extras
REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)
OVERLOAD_RETRY_AFTER_S = 1
RESTART_RETRY_AFTER_S = 2
ENERGY_VIEW_TIMEOUT_S = 10.0
"""``GET /v1/energy``: the longest wait for the registry and for each replica's fresh snapshot (a replica
that does not answer in time is shown from the registry, marked ``stale``)."""


class AccessError(RuntimeError):
    """The router's access settings would let anyone in: it refuses to start (fail closed)."""


def load_api_key(cfg: RouterConfig, environ: dict[str, str] | None = None) -> str:
    """The bearer token: the file ``router.api_key_file`` names, else the env var ``router.api_key_env``.

    A configured key file that is missing, unreadable or empty raises `AccessError` (never "no auth").
    An unset or empty variable gives '' (no key), which `require_key_off_loopback` allows on loopback
    only."""
    if cfg.api_key_file:
        path = Path(cfg.api_key_file)
        try:
            key = path.read_text(encoding="utf-8-sig").strip()  # an editor's byte-order mark is no key
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise AccessError(f"router.api_key_file {str(path)!r} cannot be read: {reason}") from None
        if not key:
            raise AccessError(f"router.api_key_file {str(path)!r} is empty: it must hold the API key")
        return key
    return (os.environ if environ is None else environ).get(cfg.api_key_env, "").strip()


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (127.0.0.0/8, ::1); ``0.0.0.0``, ``::`` and names are not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def require_key_off_loopback(host: str, api_key: str, cfg: RouterConfig) -> None:
    """Refuse to serve without a key when the HTTP proxy listens on anything but loopback."""
    if not api_key and not is_loopback(host):
        raise AccessError(
            f"the router is bound to {host!r} (Serve http_options.host), not loopback, and has no API key: "
            f"set router.api_key_file (a file holding the key) or the {cfg.api_key_env} environment "
            "variable (router.api_key_env) to a non-empty key, or bind http_options.host to 127.0.0.1"
        )


async def serve_http_host() -> str:
    """The host Serve's HTTP proxies bind (``http_options.host`` of the Serve config or of
    ``serve.start``), as the Serve controller holds it: the one place that knows it for sure."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return str((await controller.get_http_config.remote()).host)


def error_response(exc: RequestError, rid: str | None = None) -> JSONResponse:
    """The JSON error answer; a 5xx gets an ``error_id`` that is logged with it."""
    error_id = None
    if exc.status >= 500:
        error_id = uuid.uuid4().hex[:12]
        log.warning("request %s -> %d %s, error_id=%s", rid or "-", exc.status, exc.code, error_id)
    return JSONResponse(exc.body(error_id), status_code=exc.status, headers=dict(exc.headers))


def serve_request_id() -> str:
    """Serve's id of the current request: the proxy returns it as the ``X-Request-Id`` header (and
    takes the client's ``X-Request-Id`` when one is sent), so body and header agree."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or uuid.uuid4().hex


def detach_from_request() -> None:
    """Make the Serve handle calls of the current task children of no HTTP request.

    When a request is cancelled (its client went away), Serve cancels the handle calls it made (found
    by the request context's ``_internal_request_id``) and Ray cancels the actor tasks it submitted
    (recursive cancel, found by the Ray task id the async actor keeps in ``async_task_id``): a task
    started during the request inherits both context variables. An idempotent classification must
    outlive its first client (its retry waits for the answer), so its task runs under neither (same
    correlation ``request_id``)."""
    import dataclasses

    import ray._raylet
    from ray.serve import context

    ray_task_id = getattr(ray._raylet, "async_task_id", None)  # not in the stubs
    if ray_task_id is not None:
        ray_task_id.set(None)  # submitted as the actor's own task, not as the HTTP request's

    ctx = context._get_serve_request_context()
    own = {"_internal_request_id": uuid.uuid4().hex, "cancel_on_parent_request_cancel": False}
    names = {f.name for f in dataclasses.fields(ctx)}
    context._serve_request_context.set(
        dataclasses.replace(ctx, **{k: v for k, v in own.items() if k in names})  # type: ignore[arg-type]
    )


def unfinished_tag(tag: EnergyTag) -> bool:
    """A replica's tag the router has not completed yet (``_end_to_end``): a figure of scope ``model``
    without the ``overhead_not_metered`` flag. An idempotent answer whose first client went away is
    cached so: its serving overhead was never measured, and its replay must say so."""
    return tag.joules is not None and tag.scope == "model" and "overhead_not_metered" not in tag.flags


def model_response(
    model: BaseModel, headers: dict[str, str] | None = None, exclude_unset: bool = False
) -> Response:
    """A wire model as the JSON body of a 200: serialised by pydantic in one step (a ``model_dump`` then
    ``JSONResponse`` took 218 µs for a 32-text answer here, this 47 µs)."""
    body = model.model_dump_json(exclude_unset=exclude_unset)
    return Response(body, media_type="application/json", headers=headers)


def internal_error(rid: str | None) -> JSONResponse:
    """A 500 for a failure of the service itself; the traceback is logged under the error id."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("request %s failed, error_id=%s", rid or "-", error_id)
    body = RequestError(500, "internal_error", "the service failed; quote error_id when reporting it").body(
        error_id
    )
    return JSONResponse(body, status_code=500)


def unavailable(code: str, message: str, retry_after_s: float, field: str | None = None) -> RequestError:
    """503 ``code`` with ``Retry-After``: the request was fine, the service cannot take it now."""
    return RequestError(503, code, message, field, headers={"Retry-After": f"{retry_after_s:g}"})


def overloaded(what: str) -> RequestError:
    return unavailable("overloaded", f"{what} is at capacity; retry later", OVERLOAD_RETRY_AFTER_S)


def not_ready(model_id: str, st: ModelState) -> RequestError:
    """503 for a classifier that is still loading (``model_loading``) or failed (``model_failed``)."""
    loading = st.state == "loading"
    return unavailable(
        "model_loading" if loading else "model_failed",
        f"model {model_id!r} {'is still loading' if loading else 'failed'}: {st.reason or st.state}",
        LOADING_RETRY_AFTER_S if loading else RESTART_RETRY_AFTER_S,
        "model",
    )


def rejected(exc: InputRejected) -> RequestError:
    """A text the classifier refused (``classifiers.base.InputRejected``): the client's error."""
    return RequestError(exc.status, exc.code, exc.message, exc.field)


def replica_unavailable(model_id: str) -> RequestError:
    return unavailable(
        "replica_unavailable", f"the replicas of {model_id!r} are restarting", RESTART_RETRY_AFTER_S
    )


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(
        RequestError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
    )


def _progress(snap: dict[str, Any]) -> tuple[int, float]:
    """How far a replica's energy snapshot has got (readings, then joules): both only grow."""
    return int(snap.get("readings") or 0), float(snap.get("metered_j") or 0.0)


@serve.deployment(name="router")
@serve.ingress(api)
class Router:
    # Async: the constructor asks the Serve controller where the proxies listen (see `serve_http_host`).
    async def __init__(  # type: ignore[misc]
        self,
        classifiers: dict[str, Any],
        router: dict[str, Any],
        energy: dict[str, Any] | None = None,
        single_hop: dict[str, Any] | None = None,
    ) -> None:
        """``classifiers``: model id -> Serve handle of its deployment. ``energy``: the classifiers'
        energy configuration; the serving overhead is metered on the same node account as their model
        energy (another configuration would start a second account that counts the node again).
        ``single_hop``: ``{"spec", "artifacts_dir"}`` of the one classifier this replica runs itself
        (``router.layout: single_hop``)."""
        self.cfg = RouterConfig.model_validate(router)
        self.limits = Limits(self.cfg.max_body_bytes, self.cfg.max_texts, self.cfg.max_text_chars)
        self._api_key = load_api_key(self.cfg)
        host = await serve_http_host()
        require_key_off_loopback(host, self._api_key, self.cfg)  # fail closed before loading anything
        ctx = serve.get_replica_context()
        self.backends: dict[str, Backend] = {m: RemoteClassifier(h) for m, h in classifiers.items()}
        self._local: ClassifierHost | None = None
        if single_hop is not None:
            self._local = ClassifierHost()
            await self._local.start(single_hop["spec"], single_hop["artifacts_dir"])
            own_deployment = ctx.deployment if ctx else "router"
            self.backends[self._local.spec.id] = LocalClassifier(self._local, own_deployment)
        # single hop: does the classifier's share include the proxy's part (an account share does)
        self._proxy_in_share = self._local is not None and isinstance(
            self._local.server.energy.meter, AccountShareMeter
        )
        self._seen: dict[str, dict[str, dict[str, Any]]] = {}  # highest energy snapshot seen per replica
        self._inflight = 0
        self._idempotency: IdempotencyCache[ReplicaAnswer] = IdempotencyCache()
        self._app = ctx.app_name if ctx else "local"
        self._states = ModelStates(self._app, self.backends)

        self._overhead = ServingOverhead(
            EnergyConfig.model_validate(energy or {}),
            current_node_name(),
            current_node_id(),
            single_hop=self._local is not None,
        )
        log.info(
            "router ready: %d classifiers (%s), HTTP host %s, auth %s",
            len(self.backends),
            self.cfg.layout,
            host,
            "on" if self._api_key else "off (loopback only)",
        )

    def __del__(self) -> None:
        """Serve stopping this replica: in the single-hop layout the classifier it hosts goes with it
        (its engine, meter and export, and its final energy snapshot marked ``stopped``). Serve calls
        ``__del__`` on the deployment's own class only, so without this the hosted classifier was never
        closed and its registry entry read as live for 10 s more."""
        local = getattr(self, "_local", None)
        if local is not None:
            local.__del__()

    async def reconfigure(self, user_config: Any) -> None:
        """Serve's call with the deployment's ``user_config``: with ``single_hop`` it is the batching of
        the classifier this replica runs (``app.build_app`` gives this deployment the classifier's
        options), applied as `ClassifierServer.reconfigure` does. The two-hop router is deployed without
        one, so Serve never calls this there; one set on it by hand is refused."""
        if self._local is None:
            raise ValueError("the two-hop router takes no user_config; set it on a classifier deployment")
        self._local.configure_batching(BatchingOptions.from_user_config(user_config))

    async def check_health(self) -> None:
        """Serve's health check: with ``single_hop`` the classifier this replica runs must still be able
        to answer (an LLM engine or a feature stage that died fails it, and Serve replaces the replica)."""
        if self._local is not None:
            await self._local.check_health()

    # -- helpers -------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if not self._api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        ):
            raise RequestError(
                401,
                "unauthorized",
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="accuwatt"'},
            )

    async def _read_body(self, request: Request) -> bytes:
        check_content_type(request.headers.get("content-type"))
        check_declared_length(request.headers.get("content-length"), self.cfg.max_body_bytes)

        async def collect() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.cfg.max_body_bytes:
                    raise RequestError(
                        413, "body_too_large", f"body exceeds the limit of {self.cfg.max_body_bytes} bytes"
                    )
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await within(collect(), self.cfg.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(
                408, "body_timeout", f"the body did not arrive within {self.cfg.body_timeout_s} s"
            ) from None
        except ClientDisconnect:
            raise RequestError(
                400, "incomplete_body", "the connection closed before the body was complete"
            ) from None

    async def _model(self, model_id: str) -> ModelDescription:
        """A ready classifier's description; 503 ``model_loading`` / ``model_failed`` otherwise."""
        st = (await self._states.view())[model_id]
        if st.state != "ready" or st.description is None:
            raise not_ready(model_id, st)
        return st.description

    async def _call(self, model_id: str, texts: list[str], mode: str | None, rid: str) -> ReplicaAnswer:
        """Classify on a replica; a replica that dies mid-request is retried ``retries`` times (the
        request is idempotent: same ``request_id``, no side effect but the dead replica's ledger).
        ``request_timeout_s`` bounds all attempts together, not each."""
        backend = self.backends[model_id]
        deadline = time.monotonic() + self.cfg.request_timeout_s
        for attempt in range(self.cfg.retries + 1):
            try:
                left = max(deadline - time.monotonic(), 0.0)
                return await within(backend.classify(texts, mode, rid), left)
            except InputRejected as exc:  # single hop: the classifier's own exception
                raise rejected(exc) from None
            except RayTaskError as exc:  # two hops: the replica's exception, wrapped by Ray
                if not isinstance(exc.cause, InputRejected):
                    raise
                raise rejected(exc.cause) from None
            except BackPressureError:
                raise overloaded(f"the queue of {model_id!r}") from None
            except DeploymentUnavailableError:
                raise replica_unavailable(model_id) from None
            except REPLICA_GONE:
                log.warning("request %s: replica of %s died (attempt %d)", rid, model_id, attempt + 1)
            except asyncio.TimeoutError:
                raise RequestError(
                    504, "timeout", f"no answer within {self.cfg.request_timeout_s} s"
                ) from None
        raise replica_unavailable(model_id)

    async def _call_detached(
        self, model_id: str, texts: list[str], mode: str | None, rid: str
    ) -> ReplicaAnswer:
        """`_call` for the idempotency cache: in its own task, which Serve must not cancel with the
        first client's request (see `detach_from_request`)."""
        detach_from_request()
        return await self._call(model_id, texts, mode, rid)

    def _merge_energy(
        self, model_id: str, reported: dict[str, dict[str, Any]], fresh: tuple[str, dict[str, Any]] | None
    ) -> dict[str, dict[str, Any]]:
        """The registry's snapshots plus the fresh one, never behind what this router showed before
        (a dead replica's last registry entry can be older than its last fresh snapshot)."""
        replicas = dict(reported)
        if fresh is not None:
            replicas[fresh[0]] = {**fresh[1], "stale": False}
        seen = self._seen.setdefault(model_id, {})
        for rep, snap in replicas.items():
            prev = seen.get(rep)
            if prev is not None and _progress(prev) > _progress(snap):
                replicas[rep] = {**prev, "stale": snap.get("stale", True)}
            seen[rep] = replicas[rep]
        for rep, prev in seen.items():
            replicas.setdefault(rep, {**prev, "stale": True})
        return replicas

    def _end_to_end(self, tag: EnergyTag, window: RequestWindow | None) -> EnergyTag:
        """The model's tag with the serving overhead: the router's own window (two hops), or, in the
        single-hop layout, the classifier's share as it is (it covers this process already)."""
        if self._local is None:
            return add_overhead(tag, self._overhead.end(window))
        self._overhead.abandon(window)
        return single_hop_tag(tag, self._proxy_in_share)

    # -- routes --------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self, request: Request) -> JSONResponse:
        """Readiness: 200 when every classifier is ready, else 503 naming those that are not (their
        names and reasons only to an authorized caller; a probe without a token sees the status)."""
        try:
            states = await self._states.view()
            waiting = {
                m: {"state": s.state, "reason": s.reason} for m, s in states.items() if s.state != "ready"
            }
            try:
                self._authorize(request)
                detail: dict[str, Any] = {"not_ready": waiting}
            except RequestError:
                detail = {"not_ready_count": len(waiting)}
            if not waiting:
                return JSONResponse({"status": "ready", **detail})
            exc = unavailable(
                "not_ready",
                f"{len(waiting)} of {len(states)} classifiers are not ready",
                LOADING_RETRY_AFTER_S,
            )
            return JSONResponse(
                {"status": "not_ready", **detail, **exc.body()}, status_code=503, headers=dict(exc.headers)
            )
        except Exception:
            return internal_error(None)

    async def _authorized(self, request: Request, view: Callable[[], Awaitable[BaseModel]]) -> Response:
        """A read-only view for an authorized caller: its JSON, or the refusal's (4xx/503), or a 500."""
        try:
            self._authorize(request)
            return model_response(await view(), exclude_unset=True)
        except RequestError as exc:
            return error_response(exc)
        except Exception:
            return internal_error(None)

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        """Every classifier with its ``state``; answers at once, whatever the replicas are doing."""
        return await self._authorized(request, self._model_list)

    @api.get("/v1/energy")
    async def energy(self, request: Request) -> Response:
        """Every deployment's replicas (live and stale), every node account, the serving overhead."""
        return await self._authorized(request, self._energy_view)

    async def _model_list(self) -> ModelList:
        states = await self._states.view()
        return ModelList(models=[states[m].public(m) for m in self.backends])

    async def _energy_view(self) -> EnergyView:
        try:
            reported = await within(registry.get(self._app, ENERGY_VIEW_TIMEOUT_S), ENERGY_VIEW_TIMEOUT_S)
        except (asyncio.TimeoutError, RayError):
            raise unavailable(
                "energy_registry_unavailable",
                f"the energy registry (Ray's GCS) did not answer within {ENERGY_VIEW_TIMEOUT_S:g} s",
                RESTART_RETRY_AFTER_S,
            ) from None
        fresh = await asyncio.gather(
            *(within(self.backends[m].energy_snapshot(), ENERGY_VIEW_TIMEOUT_S) for m in self.backends),
            return_exceptions=True,
        )
        out: dict[str, DeploymentEnergy] = {}
        for model_id, snap in zip(self.backends, fresh, strict=True):
            if isinstance(snap, BaseException):
                log.warning("energy snapshot of %s failed: %s", model_id, type(snap).__name__)
            replicas = self._merge_energy(
                model_id, reported.get(model_id, {}), None if isinstance(snap, BaseException) else snap
            )
            out[model_id] = DeploymentEnergy.of(
                {rep: ReplicaEnergy.model_validate(s) for rep, s in replicas.items()}
            )
        try:
            nodes = await within(asyncio.to_thread(node_snapshots), ENERGY_VIEW_TIMEOUT_S)
        except Exception as exc:  # the deployments' view still stands
            log.warning("node accounts unavailable: %s", type(exc).__name__)
            nodes = {}
        return EnergyView(deployments=out, nodes=nodes, serving_overhead=self._overhead.snapshot())

    @api.post("/v1/classify")
    async def classify(self, request: Request) -> Response:
        t0 = time.perf_counter()
        rid: str | None = None
        # classifications whose clients all went away still run (idempotent ones finish for their
        # retry): they count, or clients that send and leave would hold the router's memory unbounded
        if self._inflight + self._idempotency.orphans >= self.cfg.max_inflight:
            return error_response(overloaded("the router"))
        self._inflight += 1
        window = self._overhead.begin()
        try:
            self._authorize(request)
            req = parse_classify(await self._read_body(request), self.limits)
            rid = req.request_id or serve_request_id()
            if req.model not in self.backends:
                raise RequestError(
                    404, "unknown_model", f"unknown model; available: {sorted(self.backends)}", "model"
                )
            modes = (await self._model(req.model)).modes
            if req.mode is not None and req.mode not in modes:
                raise RequestError(
                    400, "unsupported_mode", f"model {req.model!r} supports modes {modes}", "mode"
                )
            if req.request_id is None:
                result, replayed = await self._call(req.model, req.texts, req.mode, rid), False
            else:
                fp = fingerprint(req.model, req.mode, req.texts)
                result, replayed = await self._idempotency.run(
                    rid, fp, lambda: self._call_detached(req.model, req.texts, req.mode, rid)
                )
        except RequestError as exc:
            self._overhead.abandon(window)
            log.info("classify %s -> %d %s", rid or "-", exc.status, exc.code)
            return error_response(exc, rid)
        except Exception:
            self._overhead.abandon(window)
            return internal_error(rid)
        except BaseException:  # cancelled (the client went away): the window must not stay open
            self._overhead.abandon(window)
            raise
        finally:
            self._inflight -= 1
        latency = time.perf_counter() - t0
        if replayed:  # the cached answer already carries its tag (overhead included): unchanged
            self._overhead.abandon(window)
            if unfinished_tag(result.energy):  # its first client went away before adding the overhead
                # a copy, flagged: the cached answer stays as it is (a first handler that is only late
                # still completes it in place, with its overhead, for the replays after)
                result = result.model_copy(update={"energy": self._end_to_end(result.energy, None)})
        else:  # in place: an idempotent replay of this request returns the same tag
            result.energy = self._end_to_end(result.energy, window)
        energy = result.energy
        log.info(
            "classify %s model=%s texts=%d chars=%d latency=%.4fs J=%s (%s)",
            rid,
            req.model,
            len(req.texts),
            sum(len(t) for t in req.texts),
            latency,
            energy.joules,
            energy.source,
        )
        answer = ClassifyAnswer(
            model=req.model,
            request_id=rid,
            labels=[p.label for p in result.predictions],
            predictions=result.predictions,
            energy=energy,
            latency_s=latency,
            replayed=replayed,
        )
        headers = {"X-Energy-Source": energy.source}
        if energy.joules is not None:
            headers["X-Energy-Joules"] = f"{energy.joules:.9g}"
        return model_response(answer, headers)
