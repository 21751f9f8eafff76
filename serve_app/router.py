"""The HTTP ingress: validates, authenticates, routes each request to its classifier deployment,
retries once when a replica dies, and puts the energy tag in the body and the headers."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from serve_app.config import RouterConfig
from serve_app.validation import Limits, RequestError, parse_classify

log = logging.getLogger("accuwatt.router")
api = FastAPI(title="accuwatt", version="0.1.0")
REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(RequestError(exc.status_code, code, str(exc.detail)))


@serve.deployment(name="router")
@serve.ingress(api)
class Router:
    def __init__(self, classifiers: dict[str, Any], router: dict[str, Any]) -> None:
        self.handles = classifiers
        self.cfg = RouterConfig.model_validate(router)
        self.limits = Limits(self.cfg.max_body_bytes, self.cfg.max_texts, self.cfg.max_text_chars)
        self._api_key = os.environ.get(self.cfg.api_key_env, "")
        self._models: dict[str, dict[str, Any]] = {}
        ctx = serve.get_replica_context()
        self._app = ctx.app_name if ctx else "local"

    # -- helpers -------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if not self._api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key.encode()):
            raise RequestError(401, "unauthorized", "missing or invalid bearer token",
                               headers={"WWW-Authenticate": 'Bearer realm="accuwatt"'})

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_body_bytes:
            raise RequestError(413, "body_too_large",
                               f"body has {declared} bytes; the limit is {self.cfg.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.cfg.max_body_bytes:
                raise RequestError(413, "body_too_large", f"body exceeds the limit of {self.cfg.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _model(self, model_id: str) -> dict[str, Any]:
        if model_id not in self._models:
            self._models[model_id] = await self.handles[model_id].describe.remote()
        return self._models[model_id]

    async def _call(self, model_id: str, texts: list[str], mode: str | None, rid: str) -> dict[str, Any]:
        handle = self.handles[model_id]
        for attempt in range(self.cfg.retries + 1):
            try:
                return await asyncio.wait_for(handle.classify.remote(texts, mode, rid),
                                              timeout=self.cfg.request_timeout_s)
            except REPLICA_GONE:
                log.warning("request %s: replica of %s died (attempt %d)", rid, model_id, attempt + 1)
                if attempt == self.cfg.retries:
                    raise RequestError(503, "replica_unavailable", f"the replicas of {model_id!r} are restarting",
                                       headers={"Retry-After": "2"}) from None
        raise AssertionError("unreachable")

    # -- routes --------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except RequestError as exc:
            return error_response(exc)
        return JSONResponse({"models": [await self._model(m) for m in self.handles]})

    @api.get("/v1/energy")
    async def energy(self, request: Request) -> JSONResponse:
        from serve_app.registry import registry

        try:
            self._authorize(request)
        except RequestError as exc:
            return error_response(exc)
        reported = await registry(self._app).get.remote()
        fresh = await asyncio.gather(*(self.handles[m].energy_snapshot.remote() for m in self.handles))
        out: dict[str, Any] = {}
        for model_id, (replica, snap) in zip(self.handles, fresh, strict=True):
            replicas = {r: s for r, s in reported.get(model_id, {}).items()}
            replicas[replica] = {**snap, "stale": False}
            totals = {k: sum(s[k] for s in replicas.values()) for k in ("metered_j", "attributed_j", "idle_j")}
            out[model_id] = {"replicas": replicas, **totals}
        return JSONResponse({"deployments": out})

    @api.post("/v1/classify")
    async def classify(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        rid = "-"
        try:
            self._authorize(request)
            req = parse_classify(await self._read_body(request), self.limits)
            rid = req.request_id or uuid.uuid4().hex
            if req.model not in self.handles:
                raise RequestError(404, "unknown_model",
                                   f"unknown model {req.model[:100]!r}; available: {sorted(self.handles)}", "model")
            modes = (await self._model(req.model))["modes"]
            if req.mode is not None and req.mode not in modes:
                raise RequestError(400, "unsupported_mode", f"model {req.model!r} supports modes {modes}, not "
                                   f"{req.mode[:32]!r}", "mode")
            result = await self._call(req.model, req.texts, req.mode, rid)
        except RequestError as exc:
            log.info("classify %s -> %d %s", rid, exc.status, exc.code)
            return error_response(exc)
        except BackPressureError:
            log.warning("classify %s -> 503 overloaded", rid)
            return error_response(RequestError(503, "overloaded", "the classifier's queue is full; retry later",
                                               headers={"Retry-After": "1"}))
        except asyncio.TimeoutError:
            return error_response(RequestError(504, "timeout", f"no answer within {self.cfg.request_timeout_s} s"))
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("classify %s failed, error_id=%s", rid, error_id)
            return JSONResponse({"error": {"code": "internal_error", "message": "the service failed; see its log",
                                           "field": None}, "error_id": error_id}, status_code=500)
        latency = time.perf_counter() - t0
        energy = result["energy"]
        log.info("classify %s model=%s texts=%d chars=%d latency=%.4fs J=%s (%s)", rid, req.model, len(req.texts),
                 sum(len(t) for t in req.texts), latency, energy["joules"], energy["source"])
        body = {"model": req.model, "request_id": rid, "labels": [p["label"] for p in result["predictions"]],
                "predictions": result["predictions"], "energy": energy, "latency_s": latency}
        headers = {"X-Energy-Source": energy["source"]}
        if energy["joules"] is not None:
            headers["X-Energy-Joules"] = f"{energy['joules']:.9g}"
        return JSONResponse(body, headers=headers)
