"""The anchor of the Serve benchmark: bare Ray Serve apps that classify with the same model and nothing
else (no validation, auth, readiness, idempotency, retries or energy).

- ``two_hop``: a FastAPI ingress deployment calls a model deployment (dynamic batching, the model call
  in a worker thread): accuwatt's layout (router -> classifier replica) without accuwatt.
- ``one_hop``: the model inside the ingress: what a single-hop layout could reach at best.

Same deployment resources as accuwatt's defaults (0.25 CPU each). No ``from __future__ import
annotations`` here: FastAPI must resolve the route annotations of the class-based ingress.
"""

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve
from ray.serve import Application

BATCH = 32
CPUS = 0.25


class Body(BaseModel):
    model: str
    texts: list[str] | None = None
    text: str | None = None

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text or ""]


class _Batched:
    """The model with Serve's dynamic batching, as accuwatt's classifier replica does it."""

    def __init__(self, artifact_dir: str) -> None:
        from serve_app.classifiers.traditional import TraditionalClassifier

        self.clf = TraditionalClassifier(Path(artifact_dir))

    @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=0.005)
    async def labels(self, batches: list[list[str]]) -> list[list[str]]:
        flat = [t for b in batches for t in b]
        preds = await asyncio.to_thread(self.clf.compute, flat)
        out, i = [], 0
        for b in batches:
            out.append([p.label for p in preds[i : i + len(b)]])
            i += len(b)
        return out


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": CPUS})
class BareModel(_Batched):
    pass


two_hop_api = FastAPI()


@serve.deployment(max_ongoing_requests=512, ray_actor_options={"num_cpus": CPUS})
@serve.ingress(two_hop_api)
class BareIngress:
    def __init__(self, model: Any) -> None:
        self.model = model

    @two_hop_api.post("/v1/classify")
    async def classify(self, body: Body) -> dict[str, Any]:
        labels = await self.model.labels.remote(body.all_texts())
        return {"model": body.model, "labels": labels}


one_hop_api = FastAPI()


@serve.deployment(max_ongoing_requests=512, ray_actor_options={"num_cpus": CPUS})
@serve.ingress(one_hop_api)
class BareOneHop(_Batched):
    @one_hop_api.post("/v1/classify")
    async def classify(self, body: Body) -> dict[str, Any]:
        return {"model": body.model, "labels": await self.labels(body.all_texts())}


def two_hop(artifact_dir: str) -> Application:
    model: Any = BareModel
    ingress: Any = BareIngress
    return ingress.bind(model.bind(artifact_dir))


def one_hop(artifact_dir: str) -> Application:
    app: Any = BareOneHop
    return app.bind(artifact_dir)
