"""The classifier deployment: builds a classifier and its energy from config inside a Serve replica.

The request logic lives in ``server.py`` (`ClassifierReplica`, testable without Serve). This module
adds what needs Ray: the replica's meter (``build_meter``: its share of the node account, or a meter
of its own), Serve's dynamic batching for ``batched`` classifiers (concurrent requests share one
model call; an LLM engine batches on its own and is called per request; its settings come from the
deployment's ``user_config``, see `ClassifierServer.reconfigure`), and the export of its energy to
Prometheus and the app's registry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ray import serve

from serve_app import registry
from serve_app.classifiers.base import Classifier, WorkSink
from serve_app.classifiers.kinds import build_classifier
from serve_app.classifiers.llm_config import LLMSpec
from serve_app.config import AppConfig, ClassifierSpec
from serve_app.config_common import BatchingOptions
from serve_app.energy.agents import MultiNodeMeter
from serve_app.energy.base import BrokenMeter, Meter, MeterError
from serve_app.energy.footprint import (
    WorkerProcess,
    descendant_pids,
    meter_for_plan,
    plan_meter,
    settle_of,
    sources_by_node,
    unmatched_gpu_nodes,
    unmetered_gpu_nodes,
)
from serve_app.energy.keys import node_of_key
from serve_app.energy.share import AccountShareMeter
from serve_app.energy.tag import EnergyTag
from serve_app.energy.window import ReplicaEnergy
from serve_app.metrics import ReplicaMetrics, tags
from serve_app.server import ClassifierReplica
from serve_app.topology.nodes import alive_nodes, current_node_id, current_node_name
from serve_app.wire import ModelDescription, Prediction, ReplicaAnswer

log = logging.getLogger("accuwatt.deployment")
EXPORT_PERIOD_S = 1.0


def _gpu_ids() -> list[str]:
    """The GPUs Ray gave this worker; none outside Ray (``ray.get_gpu_ids`` would start a local Ray)."""
    import ray

    if not ray.is_initialized():
        return []
    try:
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # outside a Ray worker
        return []


def holds_gpus(spec: ClassifierSpec) -> bool:
    """Does the replica of ``spec`` own GPUs: an LLM's workers, or a traditional replica's
    ``deployment.num_gpus`` (its sentence encoder runs on a visible GPU)."""
    if isinstance(spec, LLMSpec):
        return spec.on_gpu
    return spec.deployment.num_gpus > 0


def build_meter(spec: ClassifierSpec, workers: list[WorkerProcess]) -> tuple[Meter, list[str]]:
    """The replica's meter over its own process tree and GPUs plus its classifier's ``workers`` (see
    ``energy/footprint.py``), and the flags its tags must carry. With ``energy.node_account`` (the
    default) it is the replica's share of each node account its work touches (serving overhead and
    shared counters counted once per node). A meter that cannot be built gives a `BrokenMeter` (tags
    say ``unavailable``; the replica still serves). An LLM on GPUs whose GPUs are not all read by NVML
    gets ``gpus_not_metered``, and so does any replica holding GPUs (a traditional replica with
    ``deployment.num_gpus``, its encoder on the GPU): its figure would be CPU energy only."""
    node = current_node_name()
    names = alive_nodes() if any(w.node_id for w in workers) else {}
    tree = descendant_pids() if spec.energy.include_children else {os.getpid()}
    plan = plan_meter(workers, _gpu_ids(), current_node_id(), node, names, tree)
    flags: list[str] = []
    try:
        meter = meter_for_plan(spec.energy, plan, node, current_node_id())
    except MeterError as exc:  # serve, with `unavailable` tags, rather than fail to start
        log.error("energy meter %r unusable, tags will say 'unavailable': %s", spec.energy.meter, exc)
        return BrokenMeter(str(exc), node), []
    if holds_gpus(spec) and spec.energy.meter != "off":
        missing = unmetered_gpu_nodes(plan.gpu_nodes, sources_by_node(meter), unmatched_gpu_nodes(meter))
        if missing or not plan.gpu_nodes:
            flags.append("gpus_not_metered")
            log.warning("GPUs of %s not metered (nodes: %s)", spec.id, missing or "GPUs not located")
    return meter, flags


def _close_quietly(*parts: Any) -> None:
    """``close()`` every part that is not None; an error in one is logged, never raised over the cause."""
    for part in parts:
        if part is not None:
            try:
                part.close()
            except Exception:
                log.exception("closing %s after a failed start failed", type(part).__name__)


class ClassifierHost:
    """One classifier in a Serve replica: builds the classifier and its energy from the spec and serves
    them through a `ClassifierReplica` (``server.py``), with batching and metrics export. It runs as
    its own deployment (`ClassifierServer`, the default two-hop layout) or inside the router's replica
    (``router.layout: single_hop``, see ``router.py``)."""

    # Async so that an LLM classifier can warm up and ask its engine where its workers run, on the
    # loop that then serves requests (the replica's event loop). Serve reports the replica running,
    # and the router the classifier ready, only after this returns.
    async def start(self, spec: dict[str, Any], artifacts_dir: str) -> None:
        valid = AppConfig.model_validate({"classifiers": [spec]}).classifiers[0]
        await self.attach(valid, build_classifier(valid, Path(artifacts_dir)))

    async def attach(self, spec: ClassifierSpec, classifier: Classifier) -> None:
        """Serve ``classifier`` (built from ``spec``): warm it up, meter it, start the export. If any
        of it fails, the classifier is closed (an LLM's engine processes end) and so is whatever energy
        part was built, before the error goes on: Serve retries a failed constructor in a new replica
        actor, and every try would otherwise leave its engine behind."""
        self.spec = spec
        self._stop = threading.Event()
        meter: Meter | None = None
        energy: ReplicaEnergy | None = None
        try:
            await classifier.warm_up()  # its energy is the replica's, before any request: no tag has it
            workers = await classifier.workers()
            ctx = serve.get_replica_context()
            self.replica = ctx.replica_tag if ctx else "local"
            meter, coverage_flags = build_meter(self.spec, workers)
            energy = ReplicaEnergy(meter, self.spec.energy, self.replica, coverage_flags, settle_of(meter))
            self.metrics = ReplicaMetrics()
            predict = self._predict_batch_of_one if classifier.batched else None
            self.server = ClassifierReplica(
                self.spec.id, self.spec.energy, classifier, energy, predict, self._record
            )
            self._exported: dict[tuple[str, str], float] = {}
            self._failed_reads_exported = 0
            self._app = ctx.app_name if ctx else "local"
            # the spec's batching (its defaults under `build_app`, until Serve's `reconfigure`)
            self.configure_batching(self.spec.deployment.batching)
            self._exporter = threading.Thread(target=self._export_loop, name="accuwatt-export", daemon=True)
            self._exporter.start()
        except BaseException:
            self._stop.set()
            self.__dict__.pop("server", None)  # closed here: __del__ must not close it again
            _close_quietly(energy if energy is not None else meter, classifier)  # energy closes its meter
            raise
        log.info(
            "replica %s ready: %s (%s), meter %s",
            self.replica,
            self.spec.id,
            self.spec.kind,
            meter.info.source,
        )

    def configure_batching(self, batching: BatchingOptions) -> None:
        """Batch the requests of a ``batched`` classifier under ``batching`` from now on: at the start,
        and on a running replica when Serve calls ``reconfigure``."""
        batcher: Any = self._predict_batch  # serve.batch adds these setters at run time
        batcher.set_max_batch_size(batching.max_batch_size)
        batcher.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.batching = batching

    # -- requests ------------------------------------------------------------------------------
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict_batch(self, batches: list[list[str]]) -> list[list[Prediction]]:
        """Concurrent requests of a ``batched`` classifier share one model call."""
        flat = [t for b in batches for t in b]
        preds = await self.server.classifier.predict(flat)
        out, i = [], 0
        for b in batches:
            out.append(preds[i : i + len(b)])
            i += len(b)
        return out

    async def _predict_batch_of_one(
        self, texts: list[str], mode: str | None, on_work: WorkSink | None
    ) -> list[Prediction]:
        return await self._predict_batch(texts)

    def _record(self, tag: EnergyTag, n_texts: int) -> None:
        if tag.joules is not None:
            self.metrics.request_energy.observe(tag.joules, tags(source=tag.source))
        self.metrics.texts.inc(n_texts, tags(source=tag.source))

    async def classify(self, texts: list[str], mode: str | None, request_id: str) -> ReplicaAnswer:
        return await self.server.classify(texts, mode, request_id)

    async def check_health(self) -> None:
        """Serve's health check of the replica (every ``deployment.health_check_period_s``): raises
        when its classifier can no longer answer, and Serve replaces the replica. Before the start
        ends there is nothing to check (Serve does not call it then)."""
        server = getattr(self, "server", None)
        if server is not None:
            await server.check_health()

    # -- views ---------------------------------------------------------------------------------
    def describe(self) -> ModelDescription:
        return self.server.describe()

    def energy(self) -> dict[str, Any]:
        """The replica's energy snapshot (its row of ``GET /v1/energy``), with the batching it applies
        now for a ``batched`` classifier (``/v1/models`` shows the description read when it started)."""
        out = {**self.server.energy.snapshot(), **self._account_fields()}
        if self.server.classifier.batched:
            out["batching"] = self.batching.model_dump()
        return out

    def _account_fields(self) -> dict[str, Any]:
        meter = self.server.energy.meter
        local = meter.local if isinstance(meter, MultiNodeMeter) else meter
        if not isinstance(local, AccountShareMeter):
            return {"scope": "replica process tree"}
        out: dict[str, Any] = {
            "scope": "node account share (replica with its children and claimed workers)",
            "group": local.group,
            "pending_j": local.pending_j(),
            "account_ticks": local.ticks,
        }
        if isinstance(meter, MultiNodeMeter):
            out["scope"] += f", and its group's share of the accounts of {', '.join(meter.nodes[1:])}"
            out["remote_groups"] = {n: f"replica:{meter.group}" for n in meter.nodes[1:]}
            out["remote_pending_j"] = meter.remote_pending_j
        return out

    def energy_snapshot(self) -> tuple[str, dict[str, Any]]:
        return self.replica, self.energy()

    # -- Prometheus export ---------------------------------------------------------------------
    def _export_loop(self) -> None:

        last_t = time.monotonic()
        while not self._stop.wait(EXPORT_PERIOD_S):
            now = time.monotonic()
            try:
                self._export(now - last_t)
                registry.put(self._app, self.spec.id, self.replica, self.energy())
            except Exception:  # metrics must never break serving
                log.exception("energy export failed")
            last_t = now

    def _export(self, dt_s: float) -> None:
        t = self.server.energy.totals()
        info = self.server.energy.info
        source = info.source
        live = "unavailable" if self.server.energy.error else source
        self.metrics.meter_info.set(1, tags(source=live, node=info.node, devices=",".join(info.devices)))
        failed = self.server.energy.failed_reads  # every failed read, idle or not
        if failed > self._failed_reads_exported:
            self.metrics.meter_errors.inc(failed - self._failed_reads_exported, tags(source=source))
            self._failed_reads_exported = failed
        if info.edge_error_j is not None:  # an account share (re-set every export, like meter_info)
            self.metrics.edge_error.set(info.edge_error_j, tags(source=source, node=info.node))
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
        """Stop the export, write the replica's final snapshot to the registry marked ``stopped`` (the
        router shows it ``stale`` at once, with the energy up to the stop), and close the classifier and
        its energy (a failed `attach` closed its own parts already and left nothing to close here)."""
        stop, server = getattr(self, "_stop", None), getattr(self, "server", None)
        exporter: threading.Thread | None = getattr(self, "_exporter", None)
        with contextlib.suppress(Exception):
            if stop is not None:
                stop.set()
            if exporter is not None and exporter is not threading.current_thread():
                exporter.join(registry.FINAL_PUT_TIMEOUT_S)  # its last put must not follow the final one
        if server is None:
            return
        final: dict[str, Any] | None = None
        with contextlib.suppress(Exception):
            final = {**self.energy(), "stopped": True}
        self.__dict__.pop("server", None)  # closed once: Serve's call, then the collector's, find none
        with contextlib.suppress(Exception):
            server.close()
        if final is not None and getattr(self, "_app", "local") != "local":
            try:
                registry.put(
                    self._app, self.spec.id, self.replica, final, timeout_s=registry.FINAL_PUT_TIMEOUT_S
                )
            except Exception as exc:  # its last periodic report stands, and turns stale in time
                log.warning("final energy snapshot of %s not recorded: %s", self.replica, type(exc).__name__)


@serve.deployment
class ClassifierServer(ClassifierHost):
    """A classifier deployment (two-hop layout): `app.py` binds one per classifier spec behind the router."""

    # Serve awaits an async constructor on the replica's event loop.
    async def __init__(self, spec: dict[str, Any], artifacts_dir: str) -> None:  # type: ignore[misc]
        await self.start(spec, artifacts_dir)

    async def reconfigure(self, user_config: Any) -> None:
        """Serve's call with the deployment's ``user_config`` (`BatchingOptions`, from ``app.py``): after
        the constructor, before the replica serves, and on every change, without a restart. One that is
        not valid raises a ValueError naming what is wrong (Serve counts the replica failed)."""
        self.configure_batching(BatchingOptions.from_user_config(user_config))

    async def classify_json(self, texts: list[str], mode: str | None, request_id: str) -> str:
        """``classify`` across the Ray hop: the `ReplicaAnswer` as JSON (``backends.RemoteClassifier``)."""
        return (await self.classify(texts, mode, request_id)).model_dump_json()
