"""The anchor of the Serve benchmark: bare Ray Serve apps that classify with the same model and nothing
else (no validation, auth, readiness, idempotency, retries or energy).

- ``two_hop``: a FastAPI ingress deployment calls a model deployment (dynamic batching, the model call
  in a worker thread): accuwatt's layout (router -> classifier replica) without accuwatt.
- ``one_hop``: the model inside the ingress: what a single-hop layout could reach at best.
- ``two_hop_own_loop``: ``two_hop`` with the Serve settings accuwatt gives its own replicas
  (``serve_app.env.SERVE_REPLICA_ENV``: request code and the handle on the replica's own event loop),
  so that accuwatt's own cost can be read apart from what those settings save.

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


def two_hop_own_loop(artifact_dir: str) -> Application:
    from serve_app.env import SERVE_REPLICA_ENV

    actor = {"num_cpus": CPUS, "runtime_env": {"env_vars": dict(SERVE_REPLICA_ENV)}}
    model: Any = BareModel.options(ray_actor_options=actor)
    ingress: Any = BareIngress.options(ray_actor_options=actor)
    return ingress.bind(model.bind(artifact_dir))


def one_hop(artifact_dir: str) -> Application:
    app: Any = BareOneHop
    return app.bind(artifact_dir)
