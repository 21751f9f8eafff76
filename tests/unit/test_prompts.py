"""Prompt building and answer parsing for LLM classifiers (pure functions)."""

from __future__ import annotations

import math

import pytest

from serve_app.classifiers import prompts
from serve_app.classifiers.prompts import UNPARSED_LABEL, parse_answer, parse_choice, settles

pytestmark = pytest.mark.unit

LABELS = ["positive", "negative"]


def test_instruction_lists_every_label_on_its_own_line() -> None:
    text = prompts.instruction(["World", "Sports", "Sci/Tech"])
    assert text.splitlines() == [
        "Classify the text as one of the following categories:",
        "- World",
        "- Sports",
        "- Sci/Tech",
    ]


def test_chat_messages_follow_the_dspy_chat_format() -> None:
    system, user = prompts.chat_messages("a fine film", LABELS)
    assert system["role"] == "system" and user["role"] == "user"
    for needle in ("`text` (str)", "`category` (str)", "[[ ## text ## ]]", "[[ ## category ## ]]"):
        assert needle in system["content"]
    assert "[[ ## completed ## ]]" in system["content"]
    assert "        - negative" in system["content"]
    assert user["content"].startswith("[[ ## text ## ]]\na fine film\n\n")
    assert "starting with the field `[[ ## category ## ]]`" in user["content"]
    assert user["content"].endswith("ending with the marker for `[[ ## completed ## ]]`.")


def test_well_formed_answer_is_parsed() -> None:
    answer = "[[ ## category ## ]]\npositive\n\n[[ ## completed ## ]]"
    assert parse_answer(answer, LABELS) == prompts.ParsedAnswer("positive", True)


@pytest.mark.parametrize(
    "answer",
    [
        "[[ ## category ## ]]\nNegative\n\n[[ ## completed ## ]]",
        "[[ ## category ## ]] negative.",
        "Sure!\n[[ ## category ## ]]\n**negative**\n[[ ## completed ## ]]",
        "[[ ## category ## ]]\n- negative\n",
        "[[##category##]]\n'negative'",
        "[[ ## category ## ]]\nnegative\nbecause the review is harsh",
    ],
)
def test_lenient_about_case_markup_and_trailing_text(answer: str) -> None:
    assert parse_answer(answer, LABELS) == prompts.ParsedAnswer("negative", True)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("positive", "no_field"),
        ("[[ ## text ## ]]\npositive", "no_field"),
        ("[[ ## category ## ]]\nneutral\n[[ ## completed ## ]]", "not_a_label"),
        ("[[ ## category ## ]]\n\n[[ ## completed ## ]]", "not_a_label"),
        ("[[ ## category ## ]]\npositive or negative", "not_a_label"),
        ("```python\noutput = ['positive']\n```", "no_field"),
    ],
)
def test_malformed_answers_are_unparsed(answer: str, reason: str) -> None:
    parsed = parse_answer(answer, LABELS)
    assert parsed == prompts.ParsedAnswer(UNPARSED_LABEL, False, reason)
    assert parsed.label not in LABELS


def test_first_category_field_wins_and_ends_at_next_marker() -> None:
    answer = "[[ ## category ## ]]\npositive\n[[ ## category ## ]]\nnegative"
    assert parse_answer(answer, LABELS).label == "positive"


def test_labels_with_punctuation_match_exactly() -> None:
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    assert parse_answer("[[ ## category ## ]]\nSci/Tech\n", labels).label == "Sci/Tech"
    assert parse_answer("[[ ## category ## ]]\nsci/tech\n", labels).label == "Sci/Tech"


def test_labels_that_begin_or_end_with_punctuation_match_leniently() -> None:
    labels = ["Umwelt (AfU)", "U.S.", "Inland"]
    for answer in ("**Umwelt (AfU)**", '"Umwelt (AfU)"', "- Umwelt (AfU)", "umwelt (afu)"):
        assert parse_answer(f"[[ ## category ## ]]\n{answer}\n", labels).label == "Umwelt (AfU)", answer
    assert parse_answer("[[ ## category ## ]]\n*U.S.*\n", labels).label == "U.S."
    # two labels alike once stripped are not guessed between
    assert parse_answer("[[ ## category ## ]]\n**US**\n", ["US.", "(US)"]).parsed is False


def test_a_choice_cut_short_settles_only_on_one_label() -> None:
    assert settles("posi", ["positive", "negative"])
    assert not settles("ne", ["neutral", "negative"])  # a piece of two labels
    assert not settles("World", ["World", "World Politics"])  # a label that begins another
    assert not settles("x", ["positive", "negative"])


def test_reasoning_answer_is_read_after_think_close() -> None:
    gen = "<think>\nIt might be [[ ## category ## ]] negative... no.\n</think>\n\n[[ ## category ## ]]\npositive\n"
    assert parse_answer(gen, LABELS, reasoning=True) == prompts.ParsedAnswer("positive", True)
    # Templates that open <think> themselves: the generation holds only the close tag.
    assert parse_answer("hmm\n</think>\n[[ ## category ## ]]\nnegative", LABELS, reasoning=True).label == (
        "negative"
    )


def test_reasoning_without_close_is_unparsed() -> None:
    parsed = parse_answer("<think>\nstill thinking [[ ## category ## ]] positive", LABELS, reasoning=True)
    assert parsed == prompts.ParsedAnswer(UNPARSED_LABEL, False, "thinking_not_closed")


def test_split_reasoning_passthrough_for_plain_models() -> None:
    assert prompts.split_reasoning("</think> x", reasoning=False) == ("", "</think> x", True)


def test_answer_prefill() -> None:
    assert prompts.answer_prefill(False) == "[[ ## category ## ]]\n"
    assert prompts.answer_prefill(True) == "<think>\n\n</think>\n\n[[ ## category ## ]]\n"
    assert prompts.answer_prefill(True, prompt_opens_think=True) == "\n</think>\n\n[[ ## category ## ]]\n"
    assert prompts.opens_think("<|Assistant|><think>\n")
    assert not prompts.opens_think("<|im_start|>assistant\n")


def test_parse_choice() -> None:
    assert parse_choice("negative", LABELS) == prompts.ParsedAnswer("negative", True)
    assert parse_choice(" positive\n", LABELS).label == "positive"
    assert parse_choice("", LABELS) == prompts.ParsedAnswer(UNPARSED_LABEL, False, "empty")
    assert parse_choice("neutral", LABELS).parsed is False
    # Cut short: the start of exactly one label determines it; an ambiguous start does not.
    assert parse_choice("pos", LABELS) == prompts.ParsedAnswer("positive", True)
    assert parse_choice("Sci", ["Sports", "Sci/Tech"]).label == "Sci/Tech"
    assert parse_choice("S", ["Sports", "Sci/Tech"]).parsed is False


def test_continuation_ids() -> None:
    assert prompts.continuation_ids([1, 2], [1, 2, 7, 8]) == [7, 8]
    assert prompts.continuation_ids([1, 2], [1, 3, 7]) is None  # merged across the boundary
    assert prompts.continuation_ids([1, 2], [1, 2]) is None  # nothing added


def test_first_token_plan() -> None:
    assert prompts.first_token_plan({"a": [5, 6], "b": [7]}) == {"a": 5, "b": 7}
    assert prompts.first_token_plan({"a": [5, 6], "b": [5, 9]}) is None
    assert prompts.first_token_plan({"a": [], "b": [7]}) is None


def test_bias_and_argmax() -> None:
    scores = prompts.biased_scores({"positive": -1.0, "negative": -2.5}, {"positive": -2.0})
    assert scores == {"positive": -3.0, "negative": -2.5}
    assert prompts.argmax_label(scores, LABELS) == "negative"
    assert prompts.argmax_label({"positive": -1.0, "negative": -1.0}, LABELS) == "positive"  # tie: first
    assert prompts.argmax_label({"positive": math.nan, "negative": -9.0}, LABELS) == "negative"
    assert prompts.argmax_label({"positive": -math.inf, "negative": -math.inf}, LABELS) == "positive"


def test_prefix_pad_fills_the_last_block_with_one_token_per_unit() -> None:
    # a tokenizer stand-in where the system message's pad costs one token per line (as in BPE
    # vocabularies with a " \n" token); the shared prefix is 126 tokens without a pad
    def shared(pad: str) -> int:
        return 126 + pad.count("\n")

    pad = prompts.prefix_pad(shared, 32, 64)
    assert pad == "\n" + prompts.PAD_UNIT
    assert shared(pad) == 128
    assert prompts.prefix_pad(lambda pad: 128 + pad.count("\n"), 32, 64) == ""  # already whole blocks


def test_prefix_pad_gives_up_beyond_its_limit() -> None:
    # a tokenizer that merges every pad into one token can never reach the block's end
    assert prompts.prefix_pad(lambda pad: 126 + (1 if pad else 0), 32, 64) == ""
    assert prompts.prefix_pad(lambda pad: 100 + pad.count("\n"), 32, 20) == ""
    assert prompts.system_message(LABELS, "\n \n").endswith("- negative\n \n")
