import pytest

from serve_app.replay.plan import TestSet, majority, plan_requests, request_id
from serve_app.replay.records import Record, RecordStore, read_records

pytestmark = pytest.mark.unit


def rec(i: int, split: str = "s0", model: str = "m") -> Record:
    return Record(
        model=model,
        split=split,
        request_index=i,
        request_id=f"r{i}",
        session="a",
        text_ids=[f"t:{i}"],
        gold=["A"],
        predicted=["A"],
        sent_unix_s=100.0 + i,
        total_s=0.5,
    )


def test_store_appends_and_resumes(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path, fsync_every=2) as s:
        for i in range(5):
            s.append(rec(i))
    with RecordStore(path) as s:
        assert s.done == {("m", "s0", i) for i in range(5)}
        with pytest.raises(ValueError):
            s.append(rec(3))
        s.append(rec(5))
    assert [r.request_index for r in read_records(path)] == list(range(6))


def test_torn_last_line_is_cut_and_the_request_redone(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path) as s:
        s.append(rec(0))
        s.append(rec(1))
    line = rec(2).model_dump_json()
    with path.open("a") as f:
        f.write(line[: len(line) // 2])  # killed mid-write
    assert len(read_records(path)) == 2
    with RecordStore(path) as s:
        assert ("m", "s0", 2) not in s.done
        s.append(rec(2))
    recs = read_records(path)
    assert [r.request_index for r in recs] == [0, 1, 2]
    assert path.read_bytes().count(b"\n") == 3


def test_plan_batches_and_stable_ids():
    ts = TestSet("s0", tuple(f"p:{i}" for i in range(5)), tuple("abcde"), ("A", "B", "A", "B", "A"))
    plan = plan_requests("run", "m", ts, batch_size=2)
    assert [len(p.texts) for p in plan] == [2, 2, 1]
    assert plan[2].text_ids == ("p:4",) and plan[1].gold == ("A", "B")
    assert (
        plan[0].request_id
        == request_id("run", "m", "s0", 0)
        == plan_requests("run", "m", ts, 2)[0].request_id
    )
    assert len({p.request_id for p in plan}) == 3
    assert request_id("run", "m2", "s0", 0) != plan[0].request_id
    with pytest.raises(ValueError):
        plan_requests("run", "m", ts, 0)


def test_majority_ties_alphabetical():
    assert majority(["B", "A", "B", "A"]) == "A"
    assert majority(["B", "B", "A"]) == "B"
    assert majority([]) is None


def test_a_run_folder_is_resumed_only_with_its_own_request_plan(tmp_path):
    """An explicit --run-name keeps the folder whatever the batch size: records are keyed by request
    index, so resuming with another batch size would record texts twice. It is refused."""
    from serve_app.data import Dataset, Pool
    from serve_app.errors import UsageError
    from serve_app.replay.config import ReplayConfig
    from serve_app.replay.results import RECORDS_FILE
    from serve_app.replay.runner import prepare_run_folder

    ds = Dataset("ds", "test", "f" * 16, None, None, Pool("p", ("a", "b", "c", "d"), ("A", "B", "A", "B")))

    def cfg(batch_size: int, concurrency: int | None = None) -> ReplayConfig:
        return ReplayConfig.model_validate(
            {
                "load": {"batch_size": batch_size, "concurrency": concurrency},
                "output": {"out": str(tmp_path), "run_name": "mine", "topology": "cpu", "progress": False},
            }
        )

    def prepare(c: ReplayConfig):
        return prepare_run_folder(c, ds, {}, "m", None, None, "s", "http://x")

    rdir = prepare(cfg(4))
    assert prepare(cfg(1)) == rdir  # nothing recorded yet: any plan may start it
    with RecordStore(rdir / RECORDS_FILE) as store:
        store.append(rec(0))
    with pytest.raises(UsageError, match="sent as closed-c1-b1, this replay would send closed-c1-b4"):
        prepare(cfg(4))
    with pytest.raises(UsageError, match="closed-c2-b1"):
        prepare(cfg(1, concurrency=2))
    assert prepare(cfg(1, concurrency=1)) == rdir  # the same plan (1 worker) resumes
    # a run.json whose settings this version cannot read (another version wrote it): one-line refusal
    import json

    from serve_app.replay.results import RUN_FILE

    run = json.loads((rdir / RUN_FILE).read_text())
    run["config"]["load"]["from_the_future"] = 1
    (rdir / RUN_FILE).write_text(json.dumps(run))
    with pytest.raises(UsageError, match="cannot read"):
        prepare(cfg(1, concurrency=1))
