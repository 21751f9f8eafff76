"""Review 7: an answer's ``prompt_tokens`` is its text's prompt, once, in every mode (real vLLM for CPU
on the tiny random Llama)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.classifiers import prompts
from serve_app.classifiers.llm import LLMClassifier
from tests.llm.conftest import EngineLoop, build, cpu_spec

TEXTS = ["a warm, funny and moving film", "dull, slow and far too long", "an utter mess"]
# one token each in the tiny vocabulary, so ``choice`` first asks for one token; a token that begins
# two of them ("in" of "in" and "input", as the tiny model's first answer here) is asked again with room
# to finish (seen: "input" in 7 tokens, and the prompt counted twice, 654 for a 327-token prompt)
LABELS = ["ne", "negative", "field", "fields", "in", "input", "of", "offense", "structure", "structured"]


@pytest.fixture(scope="module")
def tiny_pairs(tiny_model_dir: Path, engine_loop: EngineLoop) -> Iterator[LLMClassifier]:
    clf = build(cpu_spec(str(tiny_model_dir), labels=LABELS))
    yield clf
    clf.close()


def test_choice_asked_again_counts_its_prompt_once(
    tiny_pairs: LLMClassifier, tiny_model_dir: Path, engine_loop: EngineLoop
) -> None:
    from transformers import AutoTokenizer

    choice = engine_loop.run(tiny_pairs.predict(TEXTS, "choice"))
    score = engine_loop.run(tiny_pairs.predict(TEXTS, "score"))  # one forward pass over the same prompt
    asked_again = [i for i, p in enumerate(choice) if (p.generated_tokens or 0) >= 2]
    assert asked_again, [p.raw for p in choice]  # the first token left the label open at least once
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text, c, s in zip(TEXTS, choice, score, strict=True):
        messages = prompts.chat_messages(text, LABELS, "")
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        n = len(tok(rendered + prompts.answer_prefill(False, False), add_special_tokens=False)["input_ids"])
        assert c.prompt_tokens == n == s.prompt_tokens, (text, c.prompt_tokens, n, s.prompt_tokens)
        assert c.label in LABELS and c.parsed


def test_every_mode_counts_its_prompt_once(tiny_model_dir: Path, engine_loop: EngineLoop) -> None:
    """A reasoning model's ``paper`` answers after its thought in a second call, and ``score`` over
    labels that share a first token sends one request per label: the prompt stays counted once."""
    from transformers import AutoTokenizer

    labels = ["neutral", "neg"]  # both begin with the token "ne": scored as whole sequences
    clf = build(cpu_spec(str(tiny_model_dir), labels=labels, reasoning=True, reasoning_budget_tokens=8))
    try:
        assert clf.info.details["score_strategy"] == "sequence"
        text = TEXTS[0]
        paper, score, choice = (engine_loop.run(clf.predict([text], m)) for m in ("paper", "score", "choice"))
    finally:
        clf.close()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = tok.apply_chat_template(
        prompts.chat_messages(text, labels, ""), add_generation_prompt=True, tokenize=False
    )
    assert not prompts.opens_think(rendered)
    n_paper = len(tok(rendered, add_special_tokens=False)["input_ids"])
    n_head = len(tok(rendered + prompts.answer_prefill(True), add_special_tokens=False)["input_ids"])
    # the thought ran out of its 8 tokens: the answer came from a second call after a forced close
    assert (paper[0].generated_tokens or 0) > 8 and prompts.THINK_CLOSE in (paper[0].raw or "")
    assert paper[0].prompt_tokens == n_paper
    assert score[0].prompt_tokens == n_head == choice[0].prompt_tokens
    assert score[0].generated_tokens == len(labels)
