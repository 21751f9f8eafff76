"""A trivial endpoint that speaks accuwatt's HTTP API, for driver tests and the driver-capacity benchmark.

It answers ``POST /v1/classify`` after ``delay_s`` with a deterministic label per text and a fixed
``estimate`` energy tag (``joules_per_text`` J per text), lists its models on ``/v1/models`` and keeps
``/v1/energy`` counters. ``throttle_every=k`` answers the first attempt of every k-th request id with 429
and ``Retry-After: retry_after_s`` (to exercise the client's retries). Loopback only.

    python -m serve_app.replay.echo_server --port 8765 --delay-s 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.ports import free_port
from serve_app.wire import (
    ClassifyAnswer,
    DeploymentEnergy,
    EnergyTag,
    EnergyView,
    ModelEntry,
    ModelList,
    Prediction,
    ReplicaEnergy,
)

LABELS = ("OFFENSE", "OTHER")


@dataclass
class EchoState:
    delay_s: float = 0.0
    joules_per_text: float = 0.01
    throttle_every: int = 0
    retry_after_s: float = 0.05
    models: tuple[str, ...] = ("echo",)
    seen: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    attributed_j: float = 0.0
    started_s: float = field(default_factory=time.monotonic)


def build_echo_app(state: EchoState) -> Starlette:
    async def classify(request: Request) -> JSONResponse:
        body = await request.json()
        texts = body.get("texts") or [body.get("text", "")]
        rid = str(body.get("request_id") or "")
        state.seen[rid] += 1
        if body.get("model") not in state.models:
            return JSONResponse(
                {"error": {"code": "unknown_model", "message": "no such model", "field": "model"}},
                status_code=404,
            )
        if state.throttle_every and state.seen[rid] == 1 and len(state.seen) % state.throttle_every == 0:
            return JSONResponse(
                {"error": {"code": "overloaded", "message": "busy", "field": None}},
                status_code=429,
                headers={"Retry-After": f"{state.retry_after_s:g}"},
            )
        t0 = time.perf_counter()
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        labels = [LABELS[len(t) % len(LABELS)] for t in texts]
        joules = state.joules_per_text * len(texts)
        state.attributed_j += joules
        state.answered[rid] += 1
        answer = ClassifyAnswer(
            model=body["model"],
            request_id=rid,
            labels=labels,
            predictions=[Prediction(label=lab) for lab in labels],
            energy=EnergyTag(
                joules=joules,
                source="estimate",
                measured=False,
                domains_j={"cpu": joules * 0.9, "dram": joules * 0.1},
                uncertainty_j=joules / 2,
                replica="echo-0",
                nodes=["local"],
            ),
            latency_s=time.perf_counter() - t0,
        )
        return JSONResponse(
            answer.model_dump(),
            headers={"X-Energy-Joules": f"{joules}", "X-Energy-Source": "estimate", "X-Request-Id": rid},
        )

    async def models(_: Request) -> JSONResponse:
        rows = [
            ModelEntry(
                id=m,
                kind="traditional",
                labels=list(LABELS),
                devices=["cpu"],
                energy_source="estimate",
                parameters=1000,
                state="ready",
            )
            for m in state.models
        ]
        return JSONResponse(ModelList(models=rows).model_dump())

    async def energy(_: Request) -> JSONResponse:
        idle = 0.5 * (time.monotonic() - state.started_s)
        rep = ReplicaEnergy(
            source="estimate",
            metered_j=state.attributed_j + idle,
            attributed_j=state.attributed_j,
            idle_j=idle,
            requests=sum(state.answered.values()),
        )
        view = EnergyView(deployments={m: DeploymentEnergy.of({"echo-0": rep}) for m in state.models})
        return JSONResponse(view.model_dump())

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/energy", energy),
            Route("/healthz", healthz),
            Route("/readyz", healthz),
        ]
    )


class EchoServer:
    """Runs the echo app with uvicorn in a background thread on 127.0.0.1."""

    def __init__(self, state: EchoState | None = None, port: int | None = None) -> None:
        self.state = state or EchoState()
        self.port = port or free_port()
        config = uvicorn.Config(
            build_echo_app(self.state),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> EchoServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("echo server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--throttle-every", type=int, default=0)
    a = p.parse_args(argv)
    state = EchoState(delay_s=a.delay_s, throttle_every=a.throttle_every)
    uvicorn.run(build_echo_app(state), host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
