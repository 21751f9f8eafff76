"""Labelled text datasets and the study's sampling protocol.

A dataset source is one of:
- a file (``.jsonl``, ``.json`` (one document or JSON Lines), ``.csv``, ``.parquet``) holding one pool
  of texts;
- a folder with ``train.*`` and ``test.*`` files (each split samples from its own file), or with
  exactly one data file (one pool);
- ``demo``: the GermEval 2018 sample bundled with accuwatt;
- a Hugging Face dataset id (``hf:<id>`` or an id that is not a local path), where the hub is reachable.

The study's protocol: for split ``i`` draw ``n_train`` training and ``n_test`` test texts with a
generator seeded by ``(seed, i)``; from one pool the two samples are disjoint, and no text of the
test sample is in the training sample (a repeated text is passed over; where no other texts remain
the training sample is smaller).
Every model sees the same splits, so a split is fully identified by ``(dataset fingerprint, seed, i,
n_train, n_test)``.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serve_app.errors import UsageError

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DEMO_DIR = Path(__file__).parent / "data" / "demo"


class DatasetError(UsageError):
    """The dataset cannot be used: missing or unreadable file, missing column, too few texts or labels,
    test labels the training file never has."""


@dataclass(frozen=True)
class Pool:
    """Texts and gold labels of one file (or split). ``ids[i]`` is stable across runs."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Dataset:
    """A train and a test split, or one ``pool`` that :func:`make_split` splits. ``labels`` are those
    seen in any of them, sorted; fewer than two, or test labels the train split lacks, are refused
    here, whatever the source."""

    name: str
    source: str
    fingerprint: str
    train: Pool | None
    test: Pool | None
    pool: Pool | None
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.pool is None and (self.train is None or self.test is None):
            raise DatasetError(f"{self.source}: needs a train and a test split, or one pool to split")
        parts = (self.train, self.test, self.pool)
        labels = sorted({lab for p in parts if p is not None for lab in p.labels})
        if len(labels) < 2:
            raise DatasetError(f"{self.source}: need at least two labels, found {labels}")
        if self.train is not None and self.test is not None:
            unseen = sorted(set(self.test.labels) - set(self.train.labels))
            if unseen:
                raise DatasetError(
                    f"{self.source}: test labels {unseen} never occur in the training split (its "
                    f"labels: {sorted(set(self.train.labels))}); no model trained on it could answer them"
                )
        object.__setattr__(self, "labels", tuple(labels))


@dataclass(frozen=True)
class Sample:
    """Rows ``rows`` of pool ``pool`` (their texts and labels copied out)."""

    pool: str
    rows: tuple[int, ...]
    texts: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def ids(self) -> list[str]:
        return [f"{self.pool}:{r}" for r in self.rows]

    def rows_digest(self) -> str:
        """A digest of which rows of which pool the sample drew, in order: with the dataset's
        fingerprint, the exact texts (an artifact records its training sample's, so one trained on
        another draw of the same split, by an earlier version of the split, is retrained)."""
        return hashlib.sha256(f"{self.pool}:{','.join(map(str, self.rows))}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    dataset: str
    fingerprint: str
    seed: int
    index: int
    train: Sample
    test: Sample

    @property
    def key(self) -> str:
        return f"seed{self.seed}-split{self.index}-n{len(self.train.rows)}x{len(self.test.rows)}"


def _read_frame(path: Path) -> pd.DataFrame:
    """The file as a frame; text files may start with a byte-order mark. An unreadable or empty file is
    a `DatasetError` naming it."""
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise DatasetError(f"unsupported file type {suffix!r} ({path}); use one of {DATA_SUFFIXES}")
    try:
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8-sig")
        if suffix == ".json":
            return _read_json_file(path)
        if suffix == ".csv":
            return _read_csv(path)
        return pd.read_parquet(path)
    except DatasetError:
        raise
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"cannot read {path}: {reason}") from exc


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV file, its columns named by its header. A row with more fields than the header (a text
    with an unquoted comma) is a `DatasetError`: pandas took the first column for the index when the
    first row had one, shifting every column (the text lost up to its comma, the label read as the
    text, the other rows left out for want of a label)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False)
        except pd.errors.ParserWarning:
            raise DatasetError(
                f"cannot read {path}: a row has more fields than the header; quote a text that "
                "holds the separator"
            ) from None


def _read_json_file(path: Path) -> pd.DataFrame:
    """A ``.json`` file: one JSON document (a list of records, or columns), or JSON Lines under that
    name, as Hugging Face's ``Dataset.to_json`` writes them: read as lines when the whole file is not
    one document (refused before as ``Trailing data``). A file that is neither raises the first error."""
    try:
        return pd.read_json(path, dtype=False, encoding="utf-8-sig")
    except ValueError as exc:
        first = exc
    try:
        return pd.read_json(path, lines=True, dtype=False, encoding="utf-8-sig")
    except ValueError:
        raise first from None


_NOT_ONE_VALUE = (list, tuple, dict, set, np.ndarray)
"""What a JSON array or object, or a Parquet list or struct cell, reads as: several values, never one
text or one label."""


def _text(value: object, where: str) -> str:
    """A cell as text, stripped. Bytes (a Parquet binary column) are decoded as UTF-8, not written as
    their ``b'...'`` representation; bytes that are not UTF-8 are a `DatasetError` naming the column.
    A list or mapping (a multi-label dataset's ``[3, 27]``, a pre-tokenised text) is a `DatasetError`
    too: written as text it became a class or a text of its own (numpy's ``['a' 'b']`` for Parquet)."""
    if isinstance(value, _NOT_ONE_VALUE):
        raise DatasetError(
            f"{where}: holds a {type(value).__name__} of values where one value per row is needed "
            "(multi-label or pre-tokenised data: give each row one label and one text)"
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: a binary value is not UTF-8 text ({exc})") from None
    return str(value).strip()


def _label(value: object, where: str = "label") -> str:
    """A label as text. A whole number read as a float (an integer column with a missing value becomes
    float in pandas) reads as the integer, so that ``1`` and ``1.0`` name one class; a label in
    Unicode normal form NFC, so that one that looks the same composed (``ü``) or decomposed (``u`` +
    combining diaeresis) names one class."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return unicodedata.normalize("NFC", _text(value, where))


def _pool(name: str, frame: pd.DataFrame, text_col: str, label_col: str) -> Pool:
    """Rows with a text and a label; rows missing either (null, or empty in a CSV) are left out."""
    if text_col == label_col:  # one column twice: a frame of two columns whose rows are its name
        raise DatasetError(f"{name}: the text and the label column are both {text_col!r}; name two columns")
    missing = [c for c in (text_col, label_col) if c not in frame.columns]
    if missing:
        have = [str(c) for c in frame.columns]
        hint = next(
            (
                f" (the header reads as one column holding {sep!r}: a CSV file must separate its columns "
                "with commas)"
                for sep in (";", "\t", "|")
                if len(have) == 1 and sep in have[0]
            ),
            "",
        )
        raise DatasetError(f"{name}: missing column(s) {missing}; have {have}{hint}")
    frame = frame[[text_col, label_col]].dropna()
    texts = tuple(_text(t, f"{name}: column {text_col!r}") for t in frame[text_col])
    labels = tuple(_label(v, f"{name}: column {label_col!r}") for v in frame[label_col])
    keep = [i for i, (t, lab) in enumerate(zip(texts, labels, strict=True)) if t and lab]
    return Pool(name, tuple(texts[i] for i in keep), tuple(labels[i] for i in keep))


def _find(folder: Path, stem: str) -> Path | None:
    """The data file named ``stem`` in ``folder``; two (``train.csv`` and ``train.jsonl``) are a
    `DatasetError` naming them: the first by name was taken, and the other silently left out."""
    hits = [p for p in sorted(folder.iterdir()) if p.stem == stem and p.suffix.lower() in DATA_SUFFIXES]
    if len(hits) > 1:
        raise DatasetError(
            f"{folder}: {', '.join(p.name for p in hits)} are all {stem!r} data; keep one of them"
        )
    return hits[0] if hits else None


def _fingerprint(paths: list[Path], text_col: str, label_col: str) -> str:
    """The files' names and bytes, and the columns read from them: the same file read with another
    label column is another dataset (other trained models, another run). The default columns add
    nothing, so fingerprints from before columns counted stay as they were."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    h.update(_columns_key(text_col, label_col).encode())
    return h.hexdigest()[:16]


def _columns_key(text_col: str, label_col: str) -> str:
    return "" if (text_col, label_col) == ("text", "label") else f"\0columns:{text_col}\0{label_col}"


def _looks_like_hub_id(source: str) -> bool:
    """``owner/name``: one slash, not a path (``./``, ``/``, ``~``) and not a data file's name
    (``data/mine.csv`` that does not exist is a missing file, not a hub id)."""
    return (
        source.count("/") == 1
        and not source.startswith((".", "/", "~"))
        and Path(source).suffix.lower() not in DATA_SUFFIXES
    )


def load_dataset(source: str, text_col: str = "text", label_col: str = "label") -> Dataset:
    """Load a dataset from a file, a folder, ``demo`` or a Hugging Face id (see module doc)."""
    if source == "demo":
        source = str(DEMO_DIR)
    path = Path(source).expanduser()
    if source.startswith("hf:") or (not path.exists() and _looks_like_hub_id(source)):
        return _load_hf(source.removeprefix("hf:"), text_col, label_col)
    if not path.exists():
        raise DatasetError(f"dataset not found: {source}")
    if path.is_file():  # named after the file: two files of one folder are two datasets
        pool = _pool(path.stem, _read_frame(path), text_col, label_col)
        return Dataset(
            path.stem,
            str(path),
            _fingerprint([path], text_col, label_col),
            None,
            None,
            pool,
        )
    train_p, test_p = _find(path, "train"), _find(path, "test")
    if test_p is not None and train_p is not None:
        train = _pool("train", _read_frame(train_p), text_col, label_col)
        test = _pool("test", _read_frame(test_p), text_col, label_col)
        return Dataset(
            path.name, str(path), _fingerprint([train_p, test_p], text_col, label_col), train, test, None
        )
    files = [p for p in sorted(path.iterdir()) if p.suffix.lower() in DATA_SUFFIXES]
    only = test_p or (files[0] if len(files) == 1 else None)
    if only is None:
        raise DatasetError(f"{path}: expected train.* and test.*, or exactly one data file; found {files}")
    pool = _pool(only.stem, _read_frame(only), text_col, label_col)
    return Dataset(path.name, str(path), _fingerprint([only], text_col, label_col), None, None, pool)


def _load_hf(dataset_id: str, text_col: str, label_col: str) -> Dataset:
    try:
        import datasets as hf  # type: ignore[import-not-found]
    except ImportError as exc:
        raise DatasetError(
            f"{dataset_id!r} is not a local path and the `datasets` package is not installed"
        ) from exc
    try:
        dd = hf.load_dataset(dataset_id)
    except Exception as exc:  # hub unreachable, unknown id
        raise DatasetError(f"could not load Hugging Face dataset {dataset_id!r}: {exc}") from exc

    def frame(split: str) -> pd.DataFrame:
        df = dd[split].to_pandas()
        feature = dd[split].features.get(label_col)
        if feature is not None and hasattr(feature, "int2str"):
            df[label_col] = [feature.int2str(int(v)) for v in df[label_col]]
        return df

    first = dd["train"] if "train" in dd else next(iter(dd.values()))
    fp = hashlib.sha256(
        f"hf:{dataset_id}:{getattr(first, '_fingerprint', '')}{_columns_key(text_col, label_col)}".encode()
    ).hexdigest()[:16]
    train = _pool("train", frame("train"), text_col, label_col) if "train" in dd else None
    test = _pool("test", frame("test"), text_col, label_col) if "test" in dd else None
    if train is None or test is None:
        return Dataset(dataset_id, f"hf:{dataset_id}", fp, None, None, train or test)
    return Dataset(dataset_id, f"hf:{dataset_id}", fp, train, test, None)


def _take(pool: Pool, rows: np.ndarray) -> Sample:
    r = tuple(int(i) for i in rows)
    return Sample(pool.name, r, tuple(pool.texts[i] for i in r), tuple(pool.labels[i] for i in r))


def _first_unseen(pool: Pool, order: np.ndarray, held_out: set[str], n: int, where: str) -> np.ndarray:
    """The first ``n`` rows of ``order`` whose text (in NFC, as the models see it) is not one of
    ``held_out``: a text repeated in the data does not land in both the training and the test sample.
    Where no text repeats these are ``order[:n]``, the study's draw unchanged. A pool with too few
    other texts to fill ``n`` gives fewer (logged), never a test text to train on; none at all is a
    `DatasetError`."""
    fresh: list[int] = []
    shared = 0
    for r in order:
        if unicodedata.normalize("NFC", pool.texts[r]) in held_out:
            shared += 1
        else:
            fresh.append(int(r))
        if len(fresh) == n:
            break
    if not fresh:
        raise DatasetError(f"{where}: every training text is also a test text; none is left to train on")
    if len(fresh) < n and shared:
        log.warning(
            "%s: %d training texts instead of %d: %d other(s) are also test texts, left out",
            where,
            len(fresh),
            n,
            shared,
        )
    return np.array(fresh, dtype=np.int64)


def _texts_of(pool: Pool, rows: np.ndarray) -> set[str]:
    return {unicodedata.normalize("NFC", pool.texts[r]) for r in rows}


def make_split(ds: Dataset, n_train: int, n_test: int, seed: int, index: int) -> Split:
    """Split ``index`` of the study protocol (see module doc). Sizes are capped by the pools; sizes
    below 1 and a negative seed or index are refused (`ValueError`), never read as other sizes. A
    training text that is also a test text of the split (a text repeated in the pool, or in both
    files) is passed over for the next one drawn: the training sample is smaller where the pool has
    no others (logged), never holds a test text."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"split sizes must be >= 1, got n_train={n_train}, n_test={n_test}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and split index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, index])
    where = f"{ds.source} split {index}"
    if ds.pool is not None:
        n = len(ds.pool)
        if n < 3:
            raise DatasetError(f"{ds.source}: {n} texts are too few to split")
        n_te = min(n_test, n // 2)
        n_tr = min(n_train, n - n_te)
        perm = rng.permutation(n)
        return Split(
            ds.name,
            ds.fingerprint,
            seed,
            index,
            _take(
                ds.pool,
                _first_unseen(ds.pool, perm[n_te:], _texts_of(ds.pool, perm[:n_te]), n_tr, where),
            ),
            _take(ds.pool, perm[:n_te]),
        )
    assert ds.train is not None and ds.test is not None
    tr_order = rng.permutation(len(ds.train))
    te = rng.permutation(len(ds.test))[: min(n_test, len(ds.test))]
    tr = _first_unseen(ds.train, tr_order, _texts_of(ds.test, te), min(n_train, len(ds.train)), where)
    return Split(ds.name, ds.fingerprint, seed, index, _take(ds.train, tr), _take(ds.test, te))


def study_splits(ds: Dataset, n_train: int, n_test: int, splits: int, seed: int) -> list[Split]:
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    return [make_split(ds, n_train, n_test, seed, i) for i in range(splits)]


def split_identity(split: Split) -> dict[str, object]:
    """What a manifest or a result records to name a split exactly."""
    return {
        "dataset": split.dataset,
        "fingerprint": split.fingerprint,
        "seed": split.seed,
        "index": split.index,
        "n_train": len(split.train.rows),
        "n_test": len(split.test.rows),
    }
