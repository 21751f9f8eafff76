"""The LLM classifier in-process on a tiny random Llama (real vLLM for CPU, fast answers)."""

from __future__ import annotations

import math
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from serve_app.classifiers.base import InputRejected
from serve_app.classifiers.llm import LLMClassifier, UnknownModeError
from serve_app.classifiers.prompts import UNPARSED_LABEL
from tests.llm.conftest import EngineLoop, build, cpu_spec

TEXTS = ["a warm, funny and moving film", "dull, slow and far too long", "an utter mess"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, engine_loop: EngineLoop) -> Iterator[LLMClassifier]:
    clf = build(cpu_spec(str(tiny_model_dir)))
    yield clf
    clf.close()


def test_info_and_labels(tiny: LLMClassifier) -> None:
    info = tiny.info
    assert info.kind == "llm" and info.model_id == "tiny-llm"
    assert tiny.labels == ("positive", "negative") == info.labels
    assert info.devices == ("cpu",)
    assert info.details["modes"] == ["paper", "choice", "score"]
    assert info.parameters and 100_000 < info.parameters < 2_000_000


def test_choice_answers_a_label_per_text(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    preds = engine_loop.run(tiny.predict(TEXTS, "choice"))
    assert len(preds) == len(TEXTS)
    for p in preds:
        assert p.label in tiny.labels and p.parsed and p.label.startswith(p.raw or "-")
        assert p.prompt_tokens and p.prompt_tokens > 50
        assert p.generated_tokens == 1  # both labels are single tokens after the prefill


def test_default_mode_is_the_spec_default(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    preds = engine_loop.run(tiny.predict(TEXTS[:1], None))
    assert preds[0].label in tiny.labels and preds[0].scores is None  # choice


def test_score_scores_every_label_in_one_step(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    preds = engine_loop.run(tiny.predict(TEXTS, "score"))
    for p in preds:
        assert p.scores is not None and set(p.scores) == set(tiny.labels)
        assert all(s <= 0 and math.isfinite(s) for s in p.scores.values())
        assert p.label == max(p.scores, key=lambda k: p.scores[k])  # type: ignore[index]
        assert p.generated_tokens == 1 and p.parsed


def test_paper_generates_and_parses_or_marks_unparsed(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    preds = engine_loop.run(tiny.predict(TEXTS, "paper"))
    for p in preds:
        assert p.raw is not None and p.generated_tokens and p.generated_tokens <= 16
        assert (p.parsed and p.label in tiny.labels) or (not p.parsed and p.label == UNPARSED_LABEL)


def test_score_bias_moves_the_argmax(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    # The bias is applied after the engine: the same engine's scores plus a large bias decide.
    from serve_app.classifiers import prompts

    p = engine_loop.run(tiny.predict(TEXTS[:1], "score"))[0]
    assert p.scores is not None
    loser = min(p.scores, key=lambda k: p.scores[k])  # type: ignore[index]
    biased = prompts.biased_scores(p.scores, {loser: 100.0})
    assert prompts.argmax_label(biased, tiny.labels) == loser


def test_many_concurrent_texts_are_batched(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    texts = [f"review number {i}: good" for i in range(40)]
    preds = engine_loop.run(tiny.predict(texts, "score"))
    assert len(preds) == 40 and all(p.label in tiny.labels for p in preds)


def test_unknown_mode(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    with pytest.raises(UnknownModeError):
        engine_loop.run(tiny.predict(TEXTS, "fast"))


def test_a_prompt_over_the_context_is_refused_before_the_engine(
    tiny: LLMClassifier, engine_loop: EngineLoop
) -> None:
    with pytest.raises(InputRejected) as info:  # max_model_len 1024
        engine_loop.run(tiny.predict(["fine", "word " * 1500], "choice"))
    exc = info.value
    assert exc.status == 413 and exc.code == "text_too_long" and exc.field == "texts[1]"
    assert pickle.loads(pickle.dumps(exc)).field == "texts[1]"  # it crosses the Serve hop
    assert len(engine_loop.run(tiny.predict(["fine"], "choice"))) == 1


def test_request_weight_counts_prompt_tokens(tiny: LLMClassifier) -> None:
    one = tiny.request_weight(["short"])
    assert one > 50  # the prompt template alone is dozens of tokens
    assert tiny.request_weight(["short", "short"]) == 2 * one
    assert tiny.request_weight(["a much longer text " * 20]) > one
    assert tiny.request_weight([]) == 0


def test_sequence_scoring_when_labels_share_a_first_token(
    tiny_model_dir: Path, engine_loop: EngineLoop
) -> None:
    """Labels "World"/"World Politics" share their first token: each label's whole sequence is
    scored instead, and with the line break that ends the answer's field, so that "World" is
    "World" and nothing more, not the start of "World Politics" (whose score could never be higher)."""
    clf = build(cpu_spec(str(tiny_model_dir), id="tiny-seq", labels=["World", "World Politics"]))
    try:
        assert clf.info.details["score_strategy"] == "sequence"
        short, long = (clf._scored_ids[label] for label in clf.labels)
        assert long[: len(short)] != short  # the short label's sequence is not the long one's start
        p = engine_loop.run(clf.predict(TEXTS[:2], "score"))
        for pred in p:
            assert pred.scores is not None and set(pred.scores) == set(clf.labels)
            assert all(s < 0 for s in pred.scores.values())
            assert pred.generated_tokens == 2
        choice = engine_loop.run(clf.predict(TEXTS[:1], "choice"))
        assert choice[0].label in clf.labels
    finally:
        children = list(clf._engine_children)
        clf.close()
    alive = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert alive == [], f"engine processes left after close: {alive}"


def test_worker_reports_its_process(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    """One worker (the ``uni`` executor runs it in the engine core): a child of this process, on CPU,
    so the replica's meter needs nothing beyond its own process tree."""
    workers = engine_loop.run(tiny.workers())
    assert len(workers) == 1
    w = workers[0]
    assert w.pid in tiny._engine_children and w.gpu_ids == () and w.node_id is None
    assert tiny.info.details["workers"] == [
        {"rank": 0, "pid": w.pid, "host": socket.gethostname(), "device": "cpu", "gpu": None}
    ]


def test_engine_runs_in_child_processes(tiny: LLMClassifier) -> None:
    """The engine core and its worker are children of this process (what the energy estimate counts)."""
    children: Any = list(tiny._engine_children)
    assert children and all(psutil.pid_exists(pid) for pid in children)


def test_engine_steps_weight_the_energy_split(tiny: LLMClassifier, engine_loop: EngineLoop) -> None:
    """Real engine, real CPU-time meter: a ``paper`` request (up to 16 generated tokens per text) and a
    ``score`` request (one) on the same texts, side by side. The tokens each reports are the engine's
    (prefill at most its prompt, one decode step per generated token after the first) and the paper
    request, which keeps the engine busy after the score request is done, gets more of the energy."""
    import asyncio

    from serve_app.config_common import EnergyConfig
    from serve_app.energy.ledger import Allocation
    from serve_app.energy.probe import make_meter
    from serve_app.energy.sampler import Sampler

    texts = [f"{t} (take {i})" for i in range(4) for t in TEXTS]
    meter = make_meter(EnergyConfig.model_validate({"meter": "estimate"}), node="local")
    sampler = Sampler(meter, 0.02).start()
    ledger = sampler.ledger
    try:
        r0 = meter.read()
        for rid in ("paper", "score"):
            ledger.begin(rid, r0, tiny.request_weight(texts), stepped=True)
        sampler.wake()  # stepped requests are open: read every period (as ReplicaEnergy.open does)

        def sink(rid: str) -> Any:
            return lambda prefill, decode: ledger.work(rid, prefill, decode)

        async def both() -> tuple[list[Any], list[Any]]:
            paper = tiny.predict(texts, "paper", sink("paper"))
            score = tiny.predict(texts, "score", sink("score"))
            p, s = await asyncio.gather(paper, score)
            return p, s

        paper, score = engine_loop.run(both())
        r1 = meter.read()
        allocs: dict[str, Allocation] = {rid: ledger.end(rid, r1) for rid in ("paper", "score")}
    finally:
        sampler.stop()
    for rid, preds in (("paper", paper), ("score", score)):
        steps = allocs[rid].steps
        assert steps is not None
        assert 0 < steps.prefill_tokens <= sum(p.prompt_tokens for p in preds)
        assert steps.decode_tokens == sum(p.generated_tokens - 1 for p in preds)
        assert steps.prefill_j + steps.decode_j + steps.unstepped_j == pytest.approx(allocs[rid].joules)
    assert allocs["score"].steps is not None and allocs["score"].steps.decode_j == 0
    assert sum(p.generated_tokens for p in paper) > 2 * len(texts)
    assert allocs["paper"].joules > allocs["score"].joules > 0
    t = ledger.totals()
    assert t.held_j == {}
    assert sum(t.metered_j.values()) == pytest.approx(sum(t.attributed_j.values()) + sum(t.idle_j.values()))


def test_a_dead_engine_fails_the_health_check(tiny_model_dir: Path, engine_loop: EngineLoop) -> None:
    """The engine's processes killed (SIGKILL; children of this process): ``check_health`` (what Serve
    calls on the replica) raises vLLM's ``EngineDeadError``, so Serve replaces the replica instead of
    keeping one whose every request fails. While the engine lives it passes."""
    import os
    import signal
    import time

    clf = build(cpu_spec(str(tiny_model_dir), id="tiny-health"))
    try:
        engine_loop.run(clf.check_health())  # alive: passes
        for pid in list(clf._engine_children):
            os.kill(pid, signal.SIGKILL)
        error: Exception | None = None
        deadline = time.monotonic() + 30.0  # vLLM notices a dead engine core from its monitor thread
        while error is None and time.monotonic() < deadline:
            try:
                engine_loop.run(clf.check_health())
            except Exception as exc:
                error = exc
            else:
                time.sleep(0.2)
        assert type(error).__name__ == "EngineDeadError", error
    finally:
        clf.close()
