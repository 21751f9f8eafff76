"""Run folders for report tests: a real ``run.json`` and ``records.jsonl`` under a test's tmp_path."""

import json

from serve_app.replay.records import EnergyTag, Record


def write_run(
    root,
    model,
    hits,
    joules,
    *,
    dataset="ds",
    topology="cpu",
    run="r1",
    split="s0",
    untagged=(),
    failed=(),
    source="rapl",
    gpus=0,
    t0=10.0,
    total_s=1.0,
    session="x",
):
    """One run folder: request i answers right when ``hits[i]``, each tagged ``joules`` unless in
    ``untagged`` (no tag) or ``failed`` (an error, no answer, no tag); one request a second."""
    path = root / dataset / topology / model.replace("|", "_") / run
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": model,
        "dataset": dataset,
        "topology_name": topology,
        "run": run,
        "splits": {split: {"majority_label": "A"}},
        "carbon": {"g_per_kwh": 400.0},
        "topology": {
            "gpus": gpus,
            "model": {
                "id": model,
                "kind": "traditional",
                "parameters": 1_000_000,
                "trainable_parameters": 1000,
            },
        },
    }
    (path / "run.json").write_text(json.dumps(meta))
    with (path / "records.jsonl").open("a") as f:
        for i, hit in enumerate(hits):
            gold = "A" if i % 2 else "B"
            bad = i in failed
            tag = None
            if not bad and i not in untagged:
                tag = EnergyTag(
                    joules=joules, source=source, measured=source != "estimate", domains_j={"cpu": joules}
                )
            r = Record(
                model=model,
                split=split,
                request_index=i,
                request_id=f"{model}-{split}-{i}",
                session=session,
                text_ids=[str(i)],
                gold=[gold],
                predicted=None if bad else [gold if hit else "C"],
                error="HTTP 500" if bad else None,
                sent_unix_s=t0 + i,
                total_s=total_s,
                latency_s=total_s,
                energy=tag,
            )
            f.write(r.model_dump_json() + "\n")
    return path
