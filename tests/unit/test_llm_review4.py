"""Review 4 of the LLM classifiers: answer parsing where one label is another plus punctuation, and
a ``choice`` generation the engine cut short (pure functions, no engine)."""

from __future__ import annotations

import pytest

from serve_app.classifiers.prompts import UNPARSED_LABEL, ParsedAnswer, parse_answer, parse_choice

pytestmark = pytest.mark.unit

YES = ["Yes", "Yes!"]


@pytest.mark.parametrize(
    ("value", "label"),
    [("yes!", "Yes!"), ("**Yes!**", "Yes!"), ("`yes!`", "Yes!"), ("YES", "Yes"), ("Yes.", "Yes")],
)
def test_paper_answer_keeps_the_punctuation_that_tells_two_labels_apart(value: str, label: str) -> None:
    """ "yes!" names the label "Yes!" (case aside) and must not be stripped down to the label "Yes";
    "Yes." names no label exactly, so stripping its period still finds "Yes"."""
    answer = f"[[ ## category ## ]]\n{value}\n\n[[ ## completed ## ]]"
    assert parse_answer(answer, YES) == ParsedAnswer(label, True)


def test_a_choice_cut_short_on_a_label_that_begins_another_is_not_that_label() -> None:
    """The engine stopped a constrained generation at "World" (its token limit or the context's end):
    it may have been writing "World Politics", so it names no label; a piece only one label starts
    with still names that one, and a finished "World" is "World"."""
    labels = ["World", "World Politics"]
    assert parse_choice("World", labels, finished=False) == ParsedAnswer(UNPARSED_LABEL, False, "cut_short")
    assert parse_choice("World Pol", labels, finished=False) == ParsedAnswer("World Politics", True)
    assert parse_choice("World", labels, finished=True) == ParsedAnswer("World", True)
    assert parse_choice("pos", ["positive", "negative"], finished=False) == ParsedAnswer("positive", True)


@pytest.mark.parametrize("strategy", ["STRICT_SPREAD", "SPREAD"])
@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_cpu_ranks_on_the_replicas_node_refuse_a_spread_placement(strategy: str, tp: int, pp: int) -> None:
    """vLLM for CPU's ranks (mp executor, no pipeline across nodes) are the replica's children: a
    spread placement group reserves their CPUs on other nodes, and STRICT_SPREAD's three bundles are
    never placed on a one-node cluster (the deployment waits forever)."""
    from pydantic import ValidationError

    from serve_app.classifiers.llm_config import LLMSpec

    base = {"id": "x", "model": "m", "labels": ["a", "b"], "gpus_per_worker": 0}
    with pytest.raises(ValidationError, match="must not spread"):
        LLMSpec.model_validate(
            {**base, "tensor_parallel_size": tp, "pipeline_parallel_size": pp, "placement_strategy": strategy}
        )
    # still fine: packed ranks, a single CPU worker, and stages across nodes (one per node)
    packed = LLMSpec.model_validate({**base, "tensor_parallel_size": tp, "pipeline_parallel_size": pp})
    assert packed.placement() is not None and packed.placement()[1] == "STRICT_PACK"  # type: ignore[index]
    assert LLMSpec.model_validate({**base, "placement_strategy": strategy}).placement() is None
    spans = {
        **base,
        "pipeline_parallel_size": 2,
        "pipeline_spans_nodes": True,
        "placement_strategy": "STRICT_SPREAD",
    }
    assert LLMSpec.model_validate(spans).placement()[1] == "STRICT_SPREAD"  # type: ignore[index]


def test_paper_answer_names_a_label_whatever_its_unicode_composition() -> None:
    """ "Économie" composed (one code point for "É") and decomposed ("E" and a combining acute accent)
    is the same word: a label read from a file in one form is named by an answer in the other."""
    composed, decomposed = "\u00c9conomie", "E\u0301conomie"
    for label, written in ((composed, decomposed), (decomposed, composed)):
        labels = [label, "Politique"]
        answer = f"[[ ## category ## ]]\n{written}\n\n[[ ## completed ## ]]"
        assert parse_answer(answer, labels) == ParsedAnswer(label, True)
        assert parse_answer(answer.replace(written, f"**{written.upper()}**"), labels) == ParsedAnswer(
            label, True
        )
