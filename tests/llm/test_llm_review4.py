"""Review 4 of the LLM classifiers on the tiny random Llama (real vLLM for CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.classifiers.base import InputRejected
from serve_app.classifiers.llm import LLMClassifier
from tests.llm.conftest import EngineLoop, build, cpu_spec

LABELS = ["negative", "negative and positive"]  # the first is the start of the second
CONTEXT = 256


@pytest.fixture(scope="module")
def short_context(tiny_model_dir: Path, engine_loop: EngineLoop) -> Iterator[LLMClassifier]:
    clf = build(cpu_spec(str(tiny_model_dir), id="tiny-ctx", labels=LABELS, max_model_len=CONTEXT))
    yield clf
    clf.close()


def test_choice_with_no_room_to_finish_a_label_is_not_answered_with_a_shorter_one(
    short_context: LLMClassifier, engine_loop: EngineLoop
) -> None:
    """A ``choice`` prompt one token short of the context: the engine may write one token only, the
    label "negative", where (with room, max_model_len 1024) this model goes on to "negative and
    positive". That must not come back as a parsed "negative": the text is refused as too long for
    the answer (413 ``text_too_long``), or at worst marked unparsed."""
    clf = short_context
    words: list[str] = []
    while len(clf._prompt_ids(" ".join(words), "choice")) < CONTEXT - 1:
        words.append("film")
    text = " ".join(words)
    assert len(clf._prompt_ids(text, "choice")) == CONTEXT - 1
    try:
        pred = engine_loop.run(clf.predict([text], "choice"))[0]
    except InputRejected as exc:
        assert exc.status == 413 and exc.code == "text_too_long" and exc.field == "texts[0]"
    else:
        assert not pred.parsed, f"a cut-short generation was taken as a label: {pred}"
    # a text with room is answered with a whole label
    short = engine_loop.run(clf.predict(["film"], "choice"))[0]
    assert short.parsed and short.label in LABELS and short.raw == short.label
