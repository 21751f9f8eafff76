"""Zero-shot prompts and answer parsing for LLM classifiers (pure functions, no engine).

The study's prompt (shared/paper/METHOD.md) is a DSPy signature ``text -> category`` with the
instruction "Classify the text as one of the following categories:" and one ``- <label>`` line per
label, rendered in DSPy's chat format: ``[[ ## field ## ]]`` markers, a system message describing
the fields, a user message holding the text. The answer's label is read from the
``[[ ## category ## ]]`` field.

Modes:
- ``paper``: free generation; :func:`parse_answer` reads the field; an answer that is not a label is
  unparsed (label :data:`UNPARSED_LABEL`, ``parsed=False``) and counts as wrong.
- ``choice`` and ``score``: the same messages, the assistant turn prefilled up to the field
  (:func:`answer_prefill`); the engine then chooses among the labels or scores them.
Reasoning models (DeepSeek-R1 distills) think inside ``<think>...</think>``; the label is parsed after
``</think>``; in ``choice``/``score`` the prefill holds an empty thought.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

UNPARSED_LABEL = ""
"""Label of an answer that names no label (``parsed=False``); never a member of a label set."""

INSTRUCTION_HEAD = "Classify the text as one of the following categories:"
INPUT_FIELD = "text"
OUTPUT_FIELD = "category"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

PAD_UNIT = " \n"
"""One unit of :func:`prefix_pad`: a line holding one space."""
_FIELD_RE = re.compile(r"\[\[\s*##\s*(\w+)\s*##\s*\]\]")
_STRIP_CHARS = " \t\r\n\"'`*_.,;:!()[]{}<>"
_SPACE_CHARS = " \t\r\n"
_MARKUP_CHARS = " \t\r\n\"'`*_"
"""Quotes and markdown emphasis a model may put around a label (``**Yes!**``), no punctuation."""


def marker(field: str) -> str:
    """``[[ ## field ## ]]``."""
    return f"[[ ## {field} ## ]]"


def instruction(labels: Sequence[str]) -> str:
    """The study's instruction: the head line and one ``- <label>`` line per label."""
    return "\n".join([INSTRUCTION_HEAD, *(f"- {label}" for label in labels)])


def system_message(labels: Sequence[str], pad: str = "") -> str:
    """DSPy's chat-adapter system message for the signature ``text: str -> category: str``, then
    ``pad`` (blank lines from :func:`prefix_pad`, or nothing)."""
    objective = "\n".join("        " + line for line in instruction(labels).splitlines())
    return (
        "Your input fields are:\n"
        f"1. `{INPUT_FIELD}` (str)\n"
        "\n"
        "Your output fields are:\n"
        f"1. `{OUTPUT_FIELD}` (str)\n"
        "\n"
        "All interactions will be structured in the following way, with the appropriate values filled in.\n"
        "\n"
        f"{marker(INPUT_FIELD)}\n"
        f"{{{INPUT_FIELD}}}\n"
        "\n"
        f"{marker(OUTPUT_FIELD)}\n"
        f"{{{OUTPUT_FIELD}}}\n"
        "\n"
        f"{marker('completed')}\n"
        "\n"
        "In adhering to this structure, your objective is: \n"
        f"{objective}{pad}"
    )


def user_message(text: str) -> str:
    """DSPy's user message: the input field, then the request to answer with the output field."""
    return (
        f"{marker(INPUT_FIELD)}\n"
        f"{text}\n"
        "\n"
        f"Respond with the corresponding output fields, starting with the field `{marker(OUTPUT_FIELD)}`, "
        f"and then ending with the marker for `{marker('completed')}`."
    )


def chat_messages(text: str, labels: Sequence[str], pad: str = "") -> list[dict[str, str]]:
    """The study's two chat messages (system, user) for one text; ``pad`` ends the system message."""
    return [
        {"role": "system", "content": system_message(labels, pad)},
        {"role": "user", "content": user_message(text)},
    ]


def prefix_pad(shared_tokens: Callable[[str], int], block: int, most: int) -> str:
    """The shortest run of blank lines that, ending the system message, makes the prompts' shared
    prefix (``shared_tokens(pad)``: its tokens with that pad) a whole number of ``block``-token KV-cache
    blocks, trying pads of up to ``most`` units; "" when none does (or the prefix fills whole blocks).

    A prefix cache keeps whole blocks only: a shared prefix of 126 tokens in blocks of 32 has its last
    30 tokens computed again for every text. Each unit (a line holding one space) is one token in
    common BPE vocabularies, where runs of line breaks alone merge into one token.
    """
    for n in range(most + 1):
        pad = "" if n == 0 else "\n" + PAD_UNIT * (n - 1)
        if shared_tokens(pad) % block == 0:
            return pad
    return ""


def answer_prefill(reasoning: bool, prompt_opens_think: bool = False) -> str:
    """Text appended after the chat template's generation prompt in ``choice`` and ``score`` modes.

    It starts the answer at the category field, so the next tokens are the label. Reasoning models
    get an empty thought first (``prompt_opens_think``: the template already emitted ``<think>``).
    """
    head = marker(OUTPUT_FIELD) + "\n"
    if not reasoning:
        return head
    if prompt_opens_think:
        return f"\n{THINK_CLOSE}\n\n{head}"
    return f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n{head}"


def opens_think(prompt_text: str) -> bool:
    """True when a rendered prompt ends inside an opened ``<think>`` block (some R1 templates)."""
    return prompt_text.rstrip().endswith(THINK_OPEN)


def split_reasoning(generated: str, reasoning: bool) -> tuple[str, str, bool]:
    """Split a generation into ``(thinking, answer, closed)``.

    Non-reasoning models: ``("", generated, True)``. Reasoning models: the answer is what follows the
    last ``</think>``; without one the thought never ended (``closed=False``, empty answer).
    """
    if not reasoning:
        return "", generated, True
    idx = generated.rfind(THINK_CLOSE)
    if idx < 0:
        return generated, "", False
    thinking = generated[:idx].replace(THINK_OPEN, "", 1)
    return thinking, generated[idx + len(THINK_CLOSE) :], True


def field_value(answer: str, field: str = OUTPUT_FIELD) -> str | None:
    """The content of ``[[ ## field ## ]]`` up to the next marker, stripped; None without the field."""
    matches = list(_FIELD_RE.finditer(answer))
    for i, m in enumerate(matches):
        if m.group(1) == field:
            end = matches[i + 1].start() if i + 1 < len(matches) else len(answer)
            return answer[m.end() : end].strip()
    return None


def _fold(text: str) -> str:
    """``text`` for comparison: case folded, and composed (NFC), so that "É" written as one code point
    or as "E" and a combining accent are the same."""
    return unicodedata.normalize("NFC", text).casefold()


def labels_alike(labels: Sequence[str]) -> list[list[str]]:
    """Groups of labels that differ only in case or Unicode composition ("Positive" and "positive"):
    :func:`match_label` reads an answer ignoring both, so it cannot tell them apart (an LLM's answer
    "POSITIVE" or "positive." would name either). The LLM config refuses them; a trained classifier
    predicts label ids, for which they stay two labels."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(_fold(label), []).append(label)
    return [g for g in groups.values() if len(set(g)) > 1]


def match_label(value: str, labels: Sequence[str]) -> str | None:
    """The label ``value`` names: exact, else ignoring case, Unicode composition, surrounding
    quotes/markup/punctuation and a leading ``- `` bullet, on the first non-empty line. None when it
    names no label.

    Less is stripped first: ``yes!`` names the label "Yes!", not "Yes", when both are labels; ``yes.``
    (no such label) names "Yes"."""
    if value in labels:
        return value
    lines = [ln for ln in value.splitlines() if ln.strip()]
    if not lines:
        return None
    candidate = lines[0].strip()
    if candidate.startswith("- "):
        candidate = candidate[2:].strip()
    for chars in (_SPACE_CHARS, _MARKUP_CHARS):
        # a label spelled out in full (case aside), before any punctuation is taken off
        trimmed = _fold(candidate.strip(chars))
        same = [label for label in labels if _fold(label.strip(chars)) == trimmed]
        if len(same) == 1:
            return same[0]
    candidate = _fold(candidate.strip(_STRIP_CHARS))
    by_fold = {_fold(label): label for label in labels}
    if candidate in by_fold:
        return by_fold[candidate]
    # a label that itself begins or ends with such characters ("Umwelt (AfU)", "U.S."), stripped alike
    alike = [label for label in labels if _fold(label.strip(_STRIP_CHARS)) == candidate]
    return alike[0] if len(alike) == 1 else None


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed generation: ``label`` is :data:`UNPARSED_LABEL` when ``parsed`` is False."""

    label: str
    parsed: bool
    reason: str | None = None
    """Why parsing failed: ``empty``, ``thinking_not_closed``, ``no_field``, ``not_a_label`` or
    (``choice``) ``cut_short``."""


def parse_answer(generated: str, labels: Sequence[str], reasoning: bool = False) -> ParsedAnswer:
    """Read the label from a ``paper``-mode generation, as the study did (the category field)."""
    _, answer, closed = split_reasoning(generated, reasoning)
    if not closed:
        return ParsedAnswer(UNPARSED_LABEL, False, "thinking_not_closed")
    if not answer.strip():
        return ParsedAnswer(UNPARSED_LABEL, False, "empty")
    value = field_value(answer)
    if value is None:
        return ParsedAnswer(UNPARSED_LABEL, False, "no_field")
    label = match_label(value, labels)
    if label is None:
        return ParsedAnswer(UNPARSED_LABEL, False, "not_a_label")
    return ParsedAnswer(label, True)


def parse_choice(generated: str, labels: Sequence[str], finished: bool = True) -> ParsedAnswer:
    """Read a ``choice``-mode generation (constrained to the labels, so normally exact).

    A generation cut short is accepted when it is the start of exactly one label: the constraint
    leaves no other way to finish it (this lets single-token labels stop after one token).
    ``finished=False`` (the engine stopped it at its token limit or the context's end, not at the
    answer's end) accepts nothing else: a cut-short "World" that is a label but also the start of
    "World Politics" may have been on its way to the longer one (reason ``cut_short``)."""
    if not finished and generated and not settles(generated, labels):
        return ParsedAnswer(UNPARSED_LABEL, False, "cut_short")
    label = match_label(generated.strip(), labels)
    if label is None and generated:
        starts = [lab for lab in labels if lab.startswith(generated)]
        label = starts[0] if len(starts) == 1 else None
    if label is None:
        return ParsedAnswer(UNPARSED_LABEL, False, "not_a_label" if generated.strip() else "empty")
    return ParsedAnswer(label, True)


def settles(generated: str, labels: Sequence[str]) -> bool:
    """Does a ``choice`` generation cut short name one label for certain? Only when exactly one label
    starts with it: a piece that begins several (or a label that begins a longer one) does not."""
    return sum(1 for label in labels if label.startswith(generated)) == 1


def continuation_ids(prefix_ids: Sequence[int], full_ids: Sequence[int]) -> list[int] | None:
    """The tokens ``full_ids`` adds after ``prefix_ids``; None when the tokenizer merged across the
    boundary (the prefix is not a token prefix of the whole)."""
    n = len(prefix_ids)
    if len(full_ids) <= n or list(full_ids[:n]) != list(prefix_ids):
        return None
    return list(full_ids[n:])


def first_token_plan(label_ids: Mapping[str, Sequence[int]]) -> dict[str, int] | None:
    """Each label's first token when these are all distinct (one forward pass scores every label);
    None when two labels share a first token or a label has no tokens."""
    firsts: dict[str, int] = {}
    for label, ids in label_ids.items():
        if not ids:
            return None
        firsts[label] = ids[0]
    if len(set(firsts.values())) != len(firsts):
        return None
    return firsts


def biased_scores(logprobs: Mapping[str, float], bias: Mapping[str, float]) -> dict[str, float]:
    """Label log-probabilities (nats) plus each label's bias (0 when absent)."""
    return {label: lp + bias.get(label, 0.0) for label, lp in logprobs.items()}


def argmax_label(scores: Mapping[str, float], labels: Sequence[str]) -> str:
    """The label with the highest score; ties go to the earlier label; ``-inf``/NaN never win over
    a finite score."""
    best, best_score = labels[0], -math.inf
    for label in labels:
        s = scores.get(label, -math.inf)
        if not math.isnan(s) and s > best_score:
            best, best_score = label, s
    return best
