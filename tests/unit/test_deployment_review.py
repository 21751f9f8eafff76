"""Review mends in the classifier deployment, without Ray or Serve:

- ``ClassifierHost.attach``: whatever fails after the classifier is built (warm-up, its workers,
  Serve's replica context, the meter) closes the classifier before the error goes on, so an LLM's
  engine processes do not outlive a failed constructor (Serve retries it in a new actor each time);
- the meter-error count is the sampler's failed reads (an idle replica whose meter fails shows them),
  not the requests that got no energy.

The classifier here stands in for the vLLM-backed LLM classifier (its engine is a flag: running until
``close``); the meter is a RAPL tree the test writes and then breaks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ray.serve.exceptions import RayServeException

from serve_app.classifiers.base import Classifier, ClassifierInfo, WorkSink
from serve_app.config import AppConfig, ClassifierSpec
from serve_app.deployment import ClassifierHost
from serve_app.energy.base import BrokenMeter
from serve_app.energy.keys import WorkerProcess
from serve_app.energy.sampler import Sampler
from serve_app.wire import Prediction
from tests.unit.test_replica_energy import Package, energy_on

pytestmark = pytest.mark.unit


class EngineClassifier(Classifier):
    """Stands in for an LLM classifier whose engine processes run until ``close``."""

    def __init__(self, fail_in: str | None = None, error: BaseException | None = None) -> None:
        super().__init__(ClassifierInfo("m", "llm", ("a", "b")))
        self.fail_in, self.error = fail_in, error or RuntimeError(f"engine failed in {fail_in}")
        self.engine_running = True
        self.closes = 0

    async def predict(
        self, texts: list[str], mode: str | None = None, on_work: WorkSink | None = None
    ) -> list[Prediction]:
        if self.fail_in == "warm_up":
            raise self.error
        return [Prediction(label="a") for _ in texts]

    async def workers(self) -> list[WorkerProcess]:
        if self.fail_in == "workers":
            raise self.error
        return []

    def close(self) -> None:
        self.engine_running = False
        self.closes += 1


def llm_spec() -> ClassifierSpec:
    spec = {"kind": "llm", "id": "m", "model": "/m", "labels": ["a", "b"], "gpus_per_worker": 0}
    return AppConfig.model_validate({"classifiers": [spec]}).classifiers[0]


@pytest.mark.parametrize(
    ("fail_in", "error", "raised"),
    [
        ("warm_up", None, RuntimeError),
        ("workers", RuntimeError("collective_rpc timed out"), RuntimeError),
        ("warm_up", asyncio.CancelledError(), asyncio.CancelledError),  # a BaseException
        # warm-up and workers answer; outside a Serve replica Serve's own call then fails
        (None, None, RayServeException),
    ],
    ids=["warm_up", "workers", "cancelled", "replica_context"],
)
def test_a_failed_start_closes_the_classifier(
    fail_in: str | None, error: BaseException | None, raised: type[BaseException]
) -> None:
    clf = EngineClassifier(fail_in, error)
    host = ClassifierHost()
    with pytest.raises(raised):
        asyncio.run(host.attach(llm_spec(), clf))
    assert not clf.engine_running and clf.closes == 1
    assert not hasattr(host, "server")
    host.__del__()  # what the actor's teardown runs: nothing left to close, nothing raised
    assert clf.closes == 1


def test_del_of_a_host_that_never_started_does_nothing() -> None:
    ClassifierHost().__del__()


def test_every_failed_read_counts_also_on_an_idle_replica(tmp_path: Path) -> None:
    """The meter-error metric counted requests without energy: a failing replica with no requests
    showed 0. Every failed read counts now: the sampler's own (idle), the requests', the first."""
    from serve_app.energy.rapl import rapl_available

    rapl_available.cache_clear()
    package = Package(tmp_path)
    energy = energy_on(tmp_path)  # a 10 s sampler: no reads but the test's own
    try:
        assert energy.sampler.failed_reads == 0
        (package.zone / "energy_uj").write_text("not a number\n")  # the counter fails
        energy.totals()  # idle: what the sampler thread does every period
        energy.totals()
        assert energy.sampler.failed_reads == 2
        window = energy.open("r", weight=1.0)  # a request while it fails: its two reads
        assert window.close().joules is None
        assert energy.sampler.failed_reads == 4
        package.write()  # the counter is back: no more failures
        window = energy.open("r", weight=1.0)
        package.add(0.5)
        assert window.close().joules == pytest.approx(0.5)
        energy.totals()
        assert energy.sampler.failed_reads == 4
    finally:
        energy.close()


def test_a_meter_failing_from_the_start_counts_its_first_read() -> None:
    sampler = Sampler(BrokenMeter("no counters"), period_s=10)
    try:
        assert sampler.failed_reads == 1
        sampler.sample()
        assert sampler.read() is None
        assert sampler.failed_reads == 3
    finally:
        sampler.stop()
