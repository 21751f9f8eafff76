"""What ``accuwatt demo`` replays: the test split beside the split its models train on, with that
training split's majority class (the baseline of the gain and of CEGI), read here from the bundled
files themselves."""

from __future__ import annotations

import json
from collections import Counter

from serve_app.data import DEMO_DIR
from serve_app.demo import demo_app_config, demo_replay_data
from serve_app.replay.config import ReplayConfig
from serve_app.replay.runner import load_test_sets


def bundled(name: str) -> list[dict[str, str]]:
    with open(DEMO_DIR / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_the_demo_replays_the_bundled_test_texts_with_the_training_majority() -> None:
    train, test = bundled("train.jsonl"), bundled("test.jsonl")
    counts = Counter(r["label"] for r in train).most_common()
    assert counts[0][1] > counts[1][1]  # one majority class, or the baseline would be ambiguous

    app_cfg = demo_app_config()
    _, sets, meta = load_test_sets(ReplayConfig(models=["bow-logreg"], data=demo_replay_data(app_cfg)))

    assert len(sets) == 1
    ts = sets[0]
    assert sorted(ts.texts) == sorted(r["text"] for r in test)  # every bundled test text, once
    assert ts.majority_label == counts[0][0] == meta[ts.split].majority_label
    # the models train on the bundled training texts (``train_if_missing``): none of them is replayed
    assert app_cfg["train_if_missing"]["n_train"] >= len(train)
    assert not {r["text"] for r in train} & set(ts.texts)


def test_a_config_that_names_no_training_split_replays_the_file_without_a_majority() -> None:
    app_cfg = {**demo_app_config(), "train_if_missing": None}
    _, sets, meta = load_test_sets(ReplayConfig(models=["bow-logreg"], data=demo_replay_data(app_cfg)))
    assert [len(s.texts) for s in sets] == [len(bundled("test.jsonl"))]
    assert sets[0].majority_label is None and meta[sets[0].split].majority_label is None
