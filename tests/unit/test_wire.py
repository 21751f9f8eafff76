"""The wire models on the reading side: the replay driver turns a classify answer into a record, a
newer service's extra fields are ignored, a 200 that is not a classify answer is a failed request (never
a record with made-up labels), and window lines round-trip through ``windows.jsonl`` with their
version."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.replay.client import Outcome
from serve_app.replay.driver import outcome_to_record
from serve_app.replay.plan import PlannedRequest
from serve_app.replay.records import append_window, read_windows
from serve_app.wire import (
    DeploymentEnergy,
    EnergyView,
    ModelEntry,
    Prediction,
    RunInfo,
    Session,
    SplitInfo,
    Topology,
    WindowRecord,
)

REQ = PlannedRequest(0, "r-0", ("t0", "t1"), ("a text", "another"), ("OTHER", "OFFENSE"))


def answer(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "m",
        "request_id": "r-0",
        "labels": ["OTHER", "OTHER"],
        "predictions": [
            {"label": "OTHER", "scores": {"OTHER": 0.9, "OFFENSE": 0.1}, "prompt_tokens": 12},
            {"label": "OTHER", "parsed": False, "generated_tokens": 3, "prompt_tokens": 14},
        ],
        "energy": {"joules": 0.5, "source": "estimate", "model_j": 0.2, "overhead_j": 0.3},
        "latency_s": 0.01,
    }
    body.update(over)
    return body


def record_of(body: dict[str, object] | None) -> object:
    return outcome_to_record(REQ, "m", "s0", "sess", 0.0, Outcome(200, body, 0.02, 0.02, 1.0, 1))


def test_an_answer_becomes_a_record_and_unknown_fields_are_ignored() -> None:
    rec = record_of(answer(served_by="a newer router", energy_version=2))
    assert rec.ok and rec.predicted == ["OTHER", "OTHER"] and rec.parsed == [True, False]
    assert rec.prompt_tokens == [12, 14] and rec.generated_tokens == [None, 3]
    assert rec.energy is not None and rec.energy.joules == 0.5 and rec.energy.overhead_j == 0.3
    assert rec.server_latency_s == 0.01 and rec.schema_version == 1


def test_a_200_that_is_not_an_answer_is_a_failed_request() -> None:
    for body in (
        answer(predictions=[{"scores": {}}, {"label": "OTHER"}]),  # a prediction without a label
        answer(energy="0.5 J"),
        {"labels": ["OTHER", "OTHER"]},  # no predictions, no tag
    ):
        rec = record_of(body)
        assert not rec.ok and rec.predicted is None, body
        assert rec.error_code == "malformed_answer" and rec.error and "malformed answer" in rec.error


def test_one_label_per_text_or_the_request_failed() -> None:
    rec = record_of(answer(labels=["OTHER"], predictions=[{"label": "OTHER"}]))
    assert not rec.ok and rec.error_code == "label_count_mismatch"


def test_window_lines_round_trip_with_their_version(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    w = WindowRecord(
        model="m",
        split="s0",
        session="a",
        start_unix_s=1.0,
        end_unix_s=3.5,
        sent=7,
        energy_delta={"metered_j": 2.5},
    )
    append_window(path, w)
    with path.open("a") as f:
        f.write(
            json.dumps(
                {
                    "model": "m",
                    "split": "s1",
                    "session": "b",
                    "start_unix_s": 4.0,
                    "end_unix_s": 5.0,
                    "sent": 1,
                    "future_field": True,
                }
            )
            + "\n"
        )
        f.write('{"model": "m", "spl')  # a torn last line
    first, second = read_windows(path)
    assert json.loads(path.read_text().splitlines()[0])["schema_version"] == 1
    assert first == w and first.section("energy_delta", "metered_j") == 2.5
    assert first.section("codecarbon", "energy_kwh") is None
    assert second.split == "s1" and second.energy_delta is None and second.schema_version == 1


def test_energy_view_reads_the_routers_layout_and_refuses_another() -> None:
    body = {
        "deployments": {
            "m": {
                "replicas": {
                    "r1": {
                        "source": "estimate",
                        "metered_j": 3.0,
                        "attributed_j": 2.0,
                        "idle_j": 1.0,
                        "domains": {"metered": {"cpu": 2.5, "dram": 0.5}},
                        "sampler_cpu_s": 0.25,  # a snapshot field the view does not name: kept
                    }
                },
                "metered_j": 3.0,
            }
        },
        "nodes": {"n1": {"metered_j": 9.0}},
    }
    view = EnergyView.model_validate(body)
    rep = view.deployments["m"].replicas["r1"]
    assert rep.domains["metered"]["dram"] == 0.5 and not rep.stale
    assert rep.model_dump()["sampler_cpu_s"] == 0.25
    assert DeploymentEnergy.of({"a": rep, "b": rep}).attributed_j == 4.0
    # a body of another layout (flat domains, a list of replicas) is refused, never read as zeros
    for bad in (
        {"deployments": {"m": {"replicas": {"r1": {"domains": {"cpu": 2.5}}}}}},
        {"deployments": {"m": {"replicas": [{"metered_j": 1.0}]}}},
    ):
        with pytest.raises(ValidationError):
            EnergyView.model_validate(bad)


def test_run_info_round_trips_and_an_old_file_reads_with_defaults() -> None:
    info = RunInfo(
        model="m",
        dataset="ds",
        splits={"s0": SplitInfo.model_validate({"dataset": "ds", "index": 0, "majority_label": "A"})},
        topology=Topology(model=ModelEntry(id="m", kind="traditional", labels=["A", "B"]), gpus=0),
        sessions=[Session(session="x", started_unix_s=1.0)],
    )
    back = RunInfo.model_validate_json(info.model_dump_json())
    assert back == info and back.schema_version == 1
    assert json.loads(info.model_dump_json())["splits"]["s0"]["index"] == 0  # identity fields kept
    old = RunInfo.model_validate({"model": "m", "splits": {"s0": {"majority_label": "A"}}})
    assert old.topology.model is None and old.carbon.g_per_kwh is None and old.topology_name == "?"
    with pytest.raises(ValidationError):
        RunInfo.model_validate({"dataset": "ds"})  # no model: not a run.json


def test_scores_are_finite_numbers() -> None:
    """JSON has no infinity: a -inf score would be written as null and refused by the router."""
    for bad in (-math.inf, math.nan):
        with pytest.raises(ValidationError, match="finite"):
            Prediction(label="a", scores={"a": bad, "b": -0.1})
    assert Prediction(label="a", scores={"a": -30.0}).scores == {"a": -30.0}
