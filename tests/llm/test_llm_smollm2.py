"""The LLM classifier in-process on SmolLM2-135M-Instruct (a real instruct model), all three modes,
on a fixed sample of Rotten Tomatoes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.classifiers.llm import LLMClassifier
from serve_app.classifiers.prompts import UNPARSED_LABEL
from tests.conftest import SHARED_DATASETS
from tests.llm.conftest import EngineLoop, build, cpu_spec

N = 24


@pytest.fixture(scope="module")
def sample() -> tuple[list[str], list[str]]:
    from serve_app.data import load_dataset, make_split

    path = SHARED_DATASETS / "rotten_tomatoes"
    if not path.exists():
        pytest.skip("shared rotten_tomatoes dataset missing")
    split = make_split(load_dataset(str(path)), 2, N, 7, 0)
    return list(split.test.texts), list(split.test.labels)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path, engine_loop: EngineLoop) -> Iterator[LLMClassifier]:
    clf = build(
        cpu_spec(
            str(smollm2_dir),
            id="smollm2",
            max_model_len=2048,
            paper_max_tokens=48,
            align_prefix=True,  # as deployments/llm-cpu.yaml
            engine_kwargs={"block_size": 32, "enable_prefix_caching": True},
        )
    )
    yield clf
    clf.close()


def accuracy(labels: list[str], gold: list[str]) -> float:
    return sum(a == b for a, b in zip(labels, gold, strict=True)) / len(gold)


def test_parameters_are_those_of_smollm2_135m(smollm2: LLMClassifier) -> None:
    assert smollm2.info.parameters == pytest.approx(134_515_008, rel=0.01)
    assert smollm2.info.details["score_strategy"] == "first_token"


def test_choice_and_score_answer_labels(
    smollm2: LLMClassifier, engine_loop: EngineLoop, sample: tuple[list[str], list[str]]
) -> None:
    texts, gold = sample
    choice = engine_loop.run(smollm2.predict(texts, "choice"))
    score = engine_loop.run(smollm2.predict(texts, "score"))
    assert all(p.label in smollm2.labels and p.parsed for p in choice + score)
    assert all(p.generated_tokens == 1 for p in score)
    assert all(p.generated_tokens == 1 for p in choice)  # single-token labels stop after one token
    # Greedy choice and the score argmax start from the same next-token distribution.
    agree = sum(c.label == s.label for c, s in zip(choice, score, strict=True)) / len(texts)
    assert agree >= 0.8
    # A 135M model is a weak zero-shot classifier; it must at least beat a coin on clear reviews.
    assert accuracy([p.label for p in score], gold) >= 0.5


def test_paper_mode_generates_and_parses_like_the_study(
    smollm2: LLMClassifier, engine_loop: EngineLoop, sample: tuple[list[str], list[str]]
) -> None:
    texts, _ = sample
    preds = engine_loop.run(smollm2.predict(texts[:8], "paper"))
    for p in preds:
        assert p.raw is not None and 1 <= (p.generated_tokens or 0) <= 48
        assert (p.parsed and p.label in smollm2.labels) or (not p.parsed and p.label == UNPARSED_LABEL)


def test_the_shared_prefix_comes_whole_from_the_cache(
    smollm2: LLMClassifier, engine_loop: EngineLoop
) -> None:
    """``align_prefix``: the instruction ends in blank lines up to a whole number of 32-token blocks, so
    after the warm-up a new text prefills only its own tokens (without the pad the prefix is 126
    tokens, of which the cache keeps 96). The tokens computed are the engine's own count."""
    details = smollm2.info.details
    assert details["shared_prefix_tokens"] % 32 == 0 and details["prefix_pad_tokens"] > 0
    engine_loop.run(smollm2.warm_up())
    reports: list[tuple[int, int]] = []
    text = "An unexpected delight from start to finish, with a cast that never puts a foot wrong."
    engine_loop.run(smollm2.predict([text], "score", lambda p, d: reports.append((p, d))))
    prompt = smollm2._prompt_ids(text, "score")
    assert reports[0][0] == len(prompt) - details["shared_prefix_tokens"]
