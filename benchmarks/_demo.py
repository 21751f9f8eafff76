"""The trained model the Serve benchmarks share: the embedded demo dataset's first study split (300
training and 200 test texts) and the models trained on it, in a fresh temporary folder."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from serve_app.data import Split, load_dataset, make_split
from serve_app.train import train_split


def trained_demo(models: Sequence[str]) -> tuple[Split, Path]:
    """The split and the folder holding ``models``' artifacts trained on it."""
    ds = load_dataset("demo")
    split = make_split(ds, 300, 200, 20250101, 0)
    artifacts = Path(tempfile.mkdtemp(prefix="aw-bench-"))
    train_split(split, list(models), artifacts, ds.labels, ds.source)
    return split, artifacts


def cycled(texts: Sequence[str], n: int) -> list[str]:
    """``n`` texts, the test texts over and over."""
    return [texts[i % len(texts)] for i in range(n)]
