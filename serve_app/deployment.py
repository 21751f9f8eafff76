"""The classifier deployment: one replica = one loaded classifier + its energy (`ReplicaEnergy`).

Traditional models get dynamic batching (``@serve.batch``): concurrent requests share one model
call, run in a worker thread so the replica's event loop keeps accepting work. LLM classifiers are
async (vLLM's continuous batching) and are awaited directly. Every request runs inside an energy
window (``energy/window.py``: its share of the intervals it was active in, ``energy/ledger.py``); the
tag goes back with the predictions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ray import serve

from serve_app.classifiers.base import Prediction
from serve_app.config import AppConfig
from serve_app.energy.base import BrokenMeter, Meter, MeterError
from serve_app.energy.footprint import (
    WorkerProcess,
    descendant_pids,
    meter_for_plan,
    plan_meter,
    sources_by_node,
    unmetered_gpu_nodes,
)
from serve_app.energy.keys import node_of_key
from serve_app.energy.share import AccountShareMeter, account_meter
from serve_app.energy.window import ReplicaEnergy
from serve_app.metrics import ReplicaMetrics, tags
from serve_app.topology.nodes import alive_nodes, current_node_id, current_node_name

log = logging.getLogger("accuwatt.deployment")
EXPORT_PERIOD_S = 1.0


def build_classifier(spec: Any, artifacts_dir: str) -> Any:
    """Load the classifier a spec names (LLM and pipeline support are imported only when used)."""
    from pathlib import Path

    if spec.kind == "llm":
        from serve_app.classifiers.llm import build_llm_classifier

        return build_llm_classifier(spec)
    if spec.kind == "pipeline":
        from serve_app.topology.pipeline import PipelineClassifier

        return PipelineClassifier(spec, Path(artifacts_dir))
    from serve_app.classifiers.traditional import TraditionalClassifier

    return TraditionalClassifier(Path(artifacts_dir) / spec.id)


def _gpu_ids() -> list[str]:
    import ray

    try:
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # outside a Ray worker
        return []


def build_meter(spec: Any, workers: list[WorkerProcess]) -> tuple[Meter, list[str]]:
    """The replica's meter over its own process tree and GPUs plus its classifier's ``workers`` (see
    ``energy/footprint.py``), and the flags its tags must carry. With ``energy.node_account`` (the
    default) and all work on this node, it is the replica's share of the node account (serving
    overhead and shared counters counted once per node); work on other nodes keeps the per-replica
    meter (flag ``not_in_node_account``). A meter that cannot be built gives a `BrokenMeter` (tags say
    ``unavailable``; the replica still serves). An LLM on GPUs whose GPUs are not all read by NVML
    gets ``gpus_not_metered``: its figure would be CPU energy only."""
    node = current_node_name()
    names = alive_nodes() if any(w.node_id for w in workers) else {}
    tree = descendant_pids() if spec.energy.include_children else {os.getpid()}
    plan = plan_meter(workers, _gpu_ids(), current_node_id(), node, names, tree)
    flags: list[str] = []
    use_account = spec.energy.node_account and spec.energy.meter != "off" and not plan.remotes
    try:
        if use_account:
            meter: Meter = account_meter(
                spec.energy, node, current_node_id(), plan.local_pids, plan.local_gpu_ids
            )
        else:
            meter = meter_for_plan(spec.energy, plan, node)
            if spec.energy.node_account and plan.remotes:
                flags.append("not_in_node_account")
    except MeterError as exc:  # serve, with `unavailable` tags, rather than fail to start
        log.error("energy meter %r unusable, tags will say 'unavailable': %s", spec.energy.meter, exc)
        return BrokenMeter(str(exc), node), []
    if spec.kind == "llm" and spec.on_gpu and spec.energy.meter != "off":
        by_node = {node: meter.source} if isinstance(meter, AccountShareMeter) else sources_by_node(meter)
        missing = unmetered_gpu_nodes(plan.gpu_nodes, by_node)
        if missing or not plan.gpu_nodes:
            flags.append("gpus_not_metered")
            log.warning("GPUs of %s not metered (nodes: %s)", spec.id, missing or "GPUs not located")
    return meter, flags


@serve.deployment
class ClassifierServer:
    """A Serve deployment class; `app.py` binds one per classifier spec."""

    # Async so that an LLM classifier can ask its engine where its workers run, on the loop that
    # then serves requests (Serve awaits an async constructor on the replica's event loop).
    async def __init__(self, spec: dict[str, Any], artifacts_dir: str) -> None:  # type: ignore[misc]
        self.spec = AppConfig.model_validate({"classifiers": [spec]}).classifiers[0]
        self.classifier = build_classifier(self.spec, artifacts_dir)
        self.is_async = hasattr(self.classifier, "apredict")
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_tag if ctx else "local"
        workers: list[WorkerProcess] = []
        if hasattr(self.classifier, "worker_processes"):
            workers = await self.classifier.worker_processes()
        meter, coverage_flags = build_meter(self.spec, workers)
        self.replica_energy = ReplicaEnergy(meter, self.spec.energy, self.replica, coverage_flags)
        self.rule = self.spec.energy.attribution
        self.metrics = ReplicaMetrics()
        self._exported: dict[tuple[str, str], float] = {}
        self._app = ctx.app_name if ctx else "local"
        self._stop = threading.Event()
        threading.Thread(target=self._export_loop, name="accuwatt-export", daemon=True).start()
        batcher: Any = self._predict_batch  # serve.batch adds these setters at run time
        batcher.set_max_batch_size(self.spec.deployment.max_batch_size)
        batcher.set_batch_wait_timeout_s(self.spec.deployment.batch_wait_timeout_s)
        log.info(
            "replica %s ready: %s (%s), meter %s",
            self.replica,
            self.spec.id,
            self.spec.kind,
            meter.info.source,
        )

    # -- requests ------------------------------------------------------------------------------
    def _weight(self, texts: list[str]) -> float:
        if self.rule == "texts":
            return float(len(texts))
        if self.rule == "tokens":
            if hasattr(self.classifier, "request_weight"):
                return float(self.classifier.request_weight(texts))
            return sum(len(t) for t in texts) / 4.0
        return 1.0

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict_batch(self, batches: list[list[str]]) -> list[list[Prediction]]:
        flat = [t for b in batches for t in b]
        preds = await asyncio.to_thread(self.classifier.predict, flat)
        out, i = [], 0
        for b in batches:
            out.append(preds[i : i + len(b)])
            i += len(b)
        return out

    async def _predict(
        self, texts: list[str], mode: str | None, on_work: Callable[[int, int], None] | None = None
    ) -> list[Prediction]:
        """``on_work``: where an LLM engine reports each step's tokens for this request."""
        if self.is_async:
            if on_work is None:
                return list(await self.classifier.apredict(texts, mode))
            return list(await self.classifier.apredict(texts, mode, on_work))
        return await self._predict_batch(texts)

    @property
    def _stepped(self) -> bool:
        """LLM requests under the ``tokens`` rule are weighted by each engine step's tokens."""
        return self.rule == "tokens" and self.spec.kind == "llm"

    async def classify(self, texts: list[str], mode: str | None, request_id: str) -> dict[str, Any]:
        """``request_id`` is the client's correlation id, not unique (two clients, or one, may send
        the same ``X-Request-Id`` at once); the window is keyed by an id of this call alone."""
        window = self.replica_energy.open(request_id, self._weight(texts), self._stepped)
        try:
            preds = await self._predict(texts, mode, window.work if window.stepped else None)
        except BaseException:
            window.abandon()
            raise
        tokens = (sum(p.prompt_tokens or 0 for p in preds), sum(p.generated_tokens or 0 for p in preds))
        tag = window.close(tokens)
        if tag.joules is not None:
            self.metrics.request_energy.observe(tag.joules, tags(source=tag.source))
        elif tag.source != "off":
            self.metrics.meter_errors.inc(1, tags(source=self.replica_energy.info.source))
        self.metrics.texts.inc(len(texts), tags(source=tag.source))
        return {"predictions": [asdict(p) for p in preds], "energy": tag.model_dump()}

    # -- views ---------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info, meter = self.classifier.info, self.replica_energy.info
        return {
            "id": self.spec.id,
            "kind": info.kind,
            "labels": list(info.labels),
            "devices": list(info.devices),
            "energy_source": meter.source,
            "energy_devices": list(meter.devices),
            "node": meter.node,
            "energy_notes": meter.notes,
            "modes": list(info.details.get("modes", []) or []),
            "parameters": info.parameters,
            "trainable_parameters": info.trainable_parameters,
            "details": info.details,
        }

    def energy(self) -> dict[str, Any]:
        return {**self.replica_energy.snapshot(), **self._account_fields()}

    def _account_fields(self) -> dict[str, Any]:
        meter = self.replica_energy.meter
        if not isinstance(meter, AccountShareMeter):
            return {"scope": "replica process tree"}
        return {
            "scope": "node account share (replica with its children and claimed workers)",
            "group": meter.group,
            "pending_j": meter.pending_j(),
            "account_ticks": meter.ticks,
        }

    def energy_snapshot(self) -> tuple[str, dict[str, Any]]:
        return self.replica, self.energy()

    # -- Prometheus export ---------------------------------------------------------------------
    def _export_loop(self) -> None:
        from serve_app.registry import registry

        reg, last_t = None, time.monotonic()
        while not self._stop.wait(EXPORT_PERIOD_S):
            now = time.monotonic()
            try:
                self._export(now - last_t)
                reg = reg or registry(self._app)
                reg.put.remote(self.spec.id, self.replica, self.energy())
            except Exception:  # metrics must never break serving
                log.exception("energy export failed")
            last_t = now

    def _export(self, dt_s: float) -> None:
        t = self.replica_energy.totals()
        info = self.replica_energy.info
        source = info.source
        live = "unavailable" if self.replica_energy.error else source
        self.metrics.meter_info.set(1, tags(source=live, node=info.node, devices=",".join(info.devices)))
        power: dict[str, float] = {}
        for share, per_key in (("attributed", t.attributed_j), ("idle", t.idle_j)):
            for key, total in per_key.items():
                delta = total - self._exported.get((share, key), 0.0)
                if delta <= 0:
                    continue
                self._exported[(share, key)] = total
                domain, node = key.split(":", 1)[0], node_of_key(key) or info.node
                self.metrics.energy.inc(delta, tags(domain=domain, source=source, node=node, share=share))
                power[domain] = power.get(domain, 0.0) + delta
        for domain in {k.split(":", 1)[0] for k in t.metered_j}:
            self.metrics.power.set(
                power.get(domain, 0.0) / dt_s if dt_s > 0 else 0.0, tags(domain=domain, source=source)
            )

    def __del__(self) -> None:
        try:
            self._stop.set()
            self.replica_energy.close()
            if hasattr(self.classifier, "close"):
                self.classifier.close()
        except Exception:
            pass
