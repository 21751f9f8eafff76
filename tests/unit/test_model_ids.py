"""One ``--models`` syntax (spaces and/or commas), unknown ids named, and the label comparison a replay
runs before its first request."""

from __future__ import annotations

import argparse

import pytest

from serve_app.model_ids import UnknownModelError, add_models_argument, check_ids, split_ids
from serve_app.replay.labels import LabelMismatchError, check_labels, compare_labels
from serve_app.wire import ModelEntry, ModelList


@pytest.mark.parametrize(
    "argv",
    [
        ["--models", "a,b"],
        ["--models", "a", "b"],
        ["--models", "a, b"],
        ["--models", "a,", "b", "a"],
        ["--models", " a ,b,,"],
    ],
)
def test_spaces_and_commas_mean_the_same(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    add_models_argument(p, "ids")
    assert p.parse_args(argv).models == ["a", "b"]
    assert p.parse_args([]).models is None


def test_split_ids_keeps_order_and_drops_repeats() -> None:
    assert split_ids(["c,a", "b", "a,c"]) == ["c", "a", "b"]


def test_unknown_ids_are_named_with_the_known_ones() -> None:
    assert check_ids(["x", "y"], ["y", "x", "z"], "known") == ["x", "y"]
    with pytest.raises(UnknownModelError) as e:
        check_ids(["x", "nope", "zz,top"], ["y", "x"], "the service serves")
    assert str(e.value) == "unknown model ids 'nope', 'zz,top'; the service serves: x, y"


def test_compare_labels_statuses() -> None:
    entry = ModelEntry(id="m", labels=["OFFENSE", "OTHER"])
    assert compare_labels(["OFFENSE", "OTHER"], entry)["status"] == "match"
    part = compare_labels(["OFFENSE", "OTHER", "SPAM"], entry)
    assert part["status"] == "partial" and part["dataset_only"] == ["SPAM"] and part["model_only"] == []
    assert compare_labels(["OTHER"], entry)["status"] == "partial"  # the model answers more labels
    assert compare_labels(["negative", "positive"], entry)["status"] == "none"
    assert compare_labels(["a", "b"], ModelEntry(id="m", state="loading"))["status"] == "unknown"
    assert compare_labels(["a", "b"], None)["status"] == "unknown"


def test_check_labels_refuses_no_overlap_naming_both_sets() -> None:
    body = ModelList.model_validate(
        {"models": [{"id": "m1", "labels": ["OFFENSE", "OTHER"]}, {"id": "m2", "labels": ["x", "y"]}]}
    )
    with pytest.raises(LabelMismatchError, match=r"'m2' answers with labels \['x', 'y'\].*\['OTHER', 'Z'\]"):
        check_labels("ds", ["OTHER", "Z"], body, ["m1", "m2"])
    assert check_labels("ds", ["OTHER", "Z"], body, ["m1"])["m1"]["status"] == "partial"
