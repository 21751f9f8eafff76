"""What to send: a split's test texts cut into requests of ``batch_size`` texts, each with a stable id.

A request is identified by ``(model, split, request_index)``; its ``request_id`` (the service's
idempotency key, reused on every retry and on a rerun) is a UUID-5 of the run's key and that key, so
the same command resuming the same run folder always sends the same ids (``runner.run_key``: a fresh
run folder gets ids of its own, or the router would answer it from an earlier run's cache).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

_NAMESPACE = uuid.UUID("6f7d1c1e-5a7b-4f55-9a61-0c8a4e2b7d10")


@dataclass(frozen=True)
class PlannedRequest:
    index: int
    request_id: str
    text_ids: tuple[str, ...]
    texts: tuple[str, ...]
    gold: tuple[str, ...]


@dataclass(frozen=True)
class TestSet:
    """The texts of one split's test set (or of a plain test file), with stable ids."""

    __test__ = False  # not a pytest class

    split: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    gold: tuple[str, ...]
    majority_label: str | None = None
    """The training set's most frequent label (the majority-class baseline); ``None``: unknown."""


def request_id(run: str, model: str, split: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{run}\x1f{model}\x1f{split}\x1f{index}"))


def plan_requests(run: str, model: str, test: TestSet, batch_size: int = 1) -> list[PlannedRequest]:
    """Cut ``test`` into consecutive requests of ``batch_size`` texts (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out = []
    for i, start in enumerate(range(0, len(test.texts), batch_size)):
        sl = slice(start, start + batch_size)
        out.append(
            PlannedRequest(
                i, request_id(run, model, test.split, i), test.ids[sl], test.texts[sl], test.gold[sl]
            )
        )
    return out


def majority(labels: Sequence[str]) -> str | None:
    """Most frequent label (ties: alphabetically first); ``None`` for no labels."""
    if not labels:
        return None
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return min(counts, key=lambda k: (-counts[k], k))
