"""The replica's request logic without Ray or Serve (``server.py``): a real trained classifier and the
replica's energy on a RAPL tree the test writes. The test moves the counter while the model is being
called, so every expected figure comes from the joules the test wrote, not from the ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from serve_app.classifiers.base import WorkSink
from serve_app.classifiers.kinds import build_classifier
from serve_app.config import TraditionalSpec
from serve_app.config_common import EnergyConfig
from serve_app.data import load_dataset, make_split
from serve_app.energy.tag import EnergyTag
from serve_app.energy.window import ReplicaEnergy
from serve_app.server import ClassifierReplica, request_weight
from serve_app.train import train_split
from serve_app.wire import Prediction
from tests.unit.test_replica_energy import Package, energy_on

pytestmark = pytest.mark.unit
MODEL = "bow-logreg"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = load_dataset("demo")
    root = tmp_path_factory.mktemp("artifacts")
    train_split(make_split(ds, 120, 20, seed=1, index=0), [MODEL], root, ds.labels, ds.source)
    return root


def test_a_request_gets_what_the_counter_moved_during_its_model_call(tmp_path: Path, artifacts: Path) -> None:
    from serve_app.energy.rapl import rapl_available

    rapl_available.cache_clear()
    package = Package(tmp_path / "rapl")
    classifier = build_classifier(TraditionalSpec(id=MODEL), artifacts)
    energy = energy_on(tmp_path / "rapl", attribution="texts")
    seen: list[tuple[EnergyTag, int]] = []

    async def predict(texts: list[str], mode: str | None, on_work: WorkSink | None) -> list[Prediction]:
        package.add(0.6)  # the node's counter moves while the model runs
        return await classifier.predict(texts)

    server = ClassifierReplica(
        MODEL,
        EnergyConfig(attribution="texts"),
        classifier,
        energy,
        predict,
        lambda t, n: seen.append((t, n)),
    )
    try:
        package.add(0.2)  # idle before the request
        out = asyncio.run(server.classify(["Das ist gut.", "Du Idiot!"], None, "client-id"))
        snap = energy.snapshot()
    finally:
        server.close()
    assert [p.label for p in out.predictions] and all(
        p.label in ("OFFENSE", "OTHER") for p in out.predictions
    )
    tag = out.energy
    assert tag.joules == pytest.approx(0.6) and tag.source == "rapl" and tag.measured is True
    assert len(seen) == 1 and seen[0][1] == 2 and seen[0][0].joules == pytest.approx(0.6)
    assert snap["idle_j"] == pytest.approx(0.2) and snap["requests"] == 1


def test_concurrent_requests_split_a_shared_interval_by_their_texts(tmp_path: Path, artifacts: Path) -> None:
    from serve_app.energy.rapl import rapl_available

    rapl_available.cache_clear()
    package = Package(tmp_path / "rapl")
    classifier = build_classifier(TraditionalSpec(id=MODEL), artifacts)
    energy = energy_on(tmp_path / "rapl", attribution="texts")

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        both_in = asyncio.Event()
        started: list[int] = []

        async def predict(texts: list[str], mode: str | None, on_work: WorkSink | None) -> list[Prediction]:
            started.append(len(texts))
            if len(started) == 2:
                package.add(1.2)  # both requests are open: 1 : 3 texts
                both_in.set()
            await both_in.wait()
            return await classifier.predict(texts)

        server = ClassifierReplica(MODEL, EnergyConfig(attribution="texts"), classifier, energy, predict)
        one = asyncio.create_task(server.classify(["a"], None, "same"))
        await asyncio.sleep(0)
        three = asyncio.create_task(server.classify(["b", "c", "d"], None, "same"))
        return await one, await three

    try:
        one, three = asyncio.run(run())
    finally:
        energy.close()
    assert one.energy.joules == pytest.approx(1.2 / 4)
    assert three.energy.joules == pytest.approx(1.2 * 3 / 4)
    assert len(one.predictions) == 1 and len(three.predictions) == 3


def test_a_failed_model_call_closes_its_window_and_raises(tmp_path: Path, artifacts: Path) -> None:
    from serve_app.energy.rapl import rapl_available

    rapl_available.cache_clear()
    package = Package(tmp_path / "rapl")
    classifier = build_classifier(TraditionalSpec(id=MODEL), artifacts)
    energy = energy_on(tmp_path / "rapl")

    async def broken(texts: list[str], mode: str | None, on_work: WorkSink | None) -> list[Prediction]:
        package.add(0.5)
        raise RuntimeError("model failed")

    server = ClassifierReplica(MODEL, EnergyConfig(), classifier, energy, broken)
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            asyncio.run(server.classify(["x"], None, "r"))
        snap = energy.snapshot()
    finally:
        energy.close()
    # the energy it used stays attributed (to no tag), nothing is left open
    assert snap["open_requests"] == 0 and snap["attributed_j"] == pytest.approx(0.5)


@pytest.mark.parametrize("arrives", [True, False])
def test_both_ends_of_a_request_wait_for_counters_that_arrive_late(
    tmp_path: Path, artifacts: Path, arrives: bool
) -> None:
    """Another node's counters reach the replica only when its agent is polled (``MultiNodeMeter``):
    each end of a request's window asks for them and waits. Here a poll's answer is the test writing
    to the counter when asked: 0.1 J drawn before the request (the answer at its start), 0.4 J drawn
    on the other node during the model call (the answer at its end). The request gets the 0.4 J, not
    the 0.1 J. Answers that do not come in time: the tag says so, and that energy counts later."""
    from serve_app.energy.base import now_s
    from serve_app.energy.rapl import RaplMeter, rapl_available

    rapl_available.cache_clear()
    package = Package(tmp_path / "rapl")
    classifier = build_classifier(TraditionalSpec(id=MODEL), artifacts)
    asked: list[float] = []
    model_ran: list[float] = []

    async def settle(t_s: float) -> bool:
        asked.append(t_s)
        await asyncio.sleep(0.01)  # the round trip to the agent
        if arrives:
            package.add(0.1 if len(asked) == 1 else 0.4)
        return arrives

    async def predict(texts: list[str], mode: str | None, on_work: WorkSink | None) -> list[Prediction]:
        model_ran.append(now_s())
        out = await classifier.predict(texts)
        model_ran.append(now_s())
        return out

    root = tmp_path / "rapl"
    cfg = EnergyConfig.model_validate({"meter": "rapl", "sample_period_s": 10, "rapl_root": str(root)})
    energy = ReplicaEnergy(RaplMeter(str(root), node="n1"), cfg, "replica-1", [], settle)
    server = ClassifierReplica(MODEL, cfg, classifier, energy, predict)
    try:
        tag = asyncio.run(server.classify(["Das ist gut."], None, "r")).energy
        if not arrives:
            package.add(0.5)  # the late answers, after the tag
        snap = energy.snapshot()
    finally:
        server.close()
    # asked for counters as of the model call's start and of its end
    assert len(asked) == 2 and asked[0] <= model_ran[0] and asked[1] >= model_ran[1]
    if arrives:
        assert tag.joules == pytest.approx(0.4) and "remote_counters_late" not in tag.flags
        assert snap["idle_j"] == pytest.approx(0.1)
    else:
        assert tag.joules == pytest.approx(0.0) and "remote_counters_late" in tag.flags
        assert snap["idle_j"] == pytest.approx(0.5)


def test_weights_and_description(tmp_path: Path, artifacts: Path) -> None:
    from serve_app.energy.rapl import rapl_available

    rapl_available.cache_clear()
    Package(tmp_path / "rapl")
    classifier = build_classifier(TraditionalSpec(id=MODEL), artifacts)
    assert request_weight("texts", classifier, ["a", "b"]) == 2.0
    assert request_weight("tokens", classifier, ["abcd" * 5]) == 5.0  # about 4 characters a token
    assert request_weight("time", classifier, ["a", "b", "c"]) == 1.0
    energy: ReplicaEnergy = energy_on(tmp_path / "rapl", attribution="tokens")
    server = ClassifierReplica(MODEL, EnergyConfig(attribution="tokens"), classifier, energy)
    try:
        assert server.stepped is False  # a traditional model reports no engine steps
        d = server.describe()
    finally:
        server.close()
    assert d.id == MODEL and d.kind == "traditional" and d.labels == ["OFFENSE", "OTHER"]
    assert d.energy_source == "rapl" and d.node == "n1" and (d.trainable_parameters or 0) > 0


@pytest.mark.parametrize("where", ["model", "closing_settle"])
def test_a_cancelled_request_leaves_no_window_open(tmp_path: Path, artifacts: Path, where: str) -> None:
    """A client that goes away cancels the request in the replica, in the model call or while the
    closing end waits for another node's counters. Its window must close: one left open would take a
    share of every later interval. The energy drawn later goes to the next request alone."""
    from serve_app.energy.rapl import RaplMeter, rapl_available

    rapl_available.cache_clear()
    package = Package(tmp_path / "rapl")
    classifier = build_classifier(TraditionalSpec(id=MODEL), artifacts)
    settles: list[float] = []
    hang = asyncio.Event()  # never set: the cancelled step waits until cancelled

    async def settle(t_s: float) -> bool:
        settles.append(t_s)
        if where == "closing_settle" and len(settles) == 2:
            await hang.wait()
        return True

    async def predict(texts: list[str], mode: str | None, on_work: WorkSink | None) -> list[Prediction]:
        if where == "model" and len(settles) == 1:
            await hang.wait()
        return await classifier.predict(texts)

    root = tmp_path / "rapl"
    cfg = EnergyConfig.model_validate(
        {"meter": "rapl", "sample_period_s": 10, "rapl_root": str(root), "attribution": "time"}
    )
    energy = ReplicaEnergy(RaplMeter(str(root), node="n1"), cfg, "replica-1", [], settle)
    server = ClassifierReplica(MODEL, cfg, classifier, energy, predict)

    async def run() -> float | None:
        first = asyncio.ensure_future(server.classify(["Das ist gut."], None, "gone"))
        while not (len(settles) >= (2 if where == "closing_settle" else 1)):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

        async def model_draws(
            texts: list[str], mode: str | None, on_work: WorkSink | None
        ) -> list[Prediction]:
            package.add(1.0)
            return await classifier.predict(texts)

        server._predict = model_draws
        return (await server.classify(["Du Idiot!"], None, "next")).energy.joules

    try:
        joules = asyncio.run(run())
        snap = energy.snapshot()
    finally:
        server.close()
    assert snap["open_requests"] == 0
    assert joules == pytest.approx(1.0)  # not half of it: no phantom sharer
