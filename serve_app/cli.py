"""The `accuwatt` command. Thin: each subcommand parses arguments and calls one function."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from serve_app import __version__
from serve_app.argtypes import int_at_least, non_negative_int, positive_int
from serve_app.errors import UsageError
from serve_app.model_ids import add_models_argument, check_ids
from serve_app.replay.ready import NotReadyError

# Modules that add their own subcommands through `register(subparsers)`.
COMMAND_MODULES = (
    "serve_app.demo",
    "serve_app.replay.cli",
    "serve_app.report.cli",
    "serve_app.models_prepare",
    "serve_app.monitoring",
    "serve_app.sweep.cli",
    "serve_app.topology",
)


def _dataset_args(p: argparse.ArgumentParser, splits: int) -> None:
    p.add_argument(
        "--dataset", default="demo", help="file, folder, 'demo' or a Hugging Face id (default: demo)"
    )
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument(
        "--n-train", type=int_at_least(2), default=200, help="training texts per split (study: 200)"
    )
    p.add_argument("--n-test", type=positive_int, default=200, help="test texts per split (study: 200)")
    p.add_argument("--splits", type=positive_int, default=splits, help="number of splits (study: 10)")
    p.add_argument(
        "--seed", type=non_negative_int, default=20250101, help="split seed; split i uses (seed, i)"
    )
    add_models_argument(p, "traditional model ids (default: all six)")
    p.add_argument(
        "--embedding-model",
        default="packaged:all-MiniLM-L6-v2",
        help="sentence-transformers model: local path, hub id, or the packaged MiniLM",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable results")


def traditional_models(ids: list[str] | None) -> list[str]:
    """The traditional models a command trains: ``ids`` checked, or all six."""
    from serve_app.classifiers.traditional import MODEL_IDS

    return check_ids(ids, MODEL_IDS, "the traditional models are") if ids else list(MODEL_IDS)


def cmd_train(args: argparse.Namespace) -> int:
    from serve_app.data import load_dataset, make_split
    from serve_app.train import train_split

    models = traditional_models(args.models)
    ds = load_dataset(args.dataset, args.text_col, args.label_col)
    results = {}
    for i in range(args.split_index, args.split_index + args.splits):
        split = make_split(ds, args.n_train, args.n_test, args.seed, i)
        out = Path(args.out) if args.splits == 1 else Path(args.out) / split.key
        results[split.key] = {
            "dir": str(out),
            "manifests": train_split(split, models, out, ds.labels, ds.source, args.embedding_model),
        }
        if not args.json:
            print(f"split {i}: trained {', '.join(models)} -> {out}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from serve_app.data import load_dataset, study_splits
    from serve_app.train import evaluate_split, summarize

    models = traditional_models(args.models)
    ds = load_dataset(args.dataset, args.text_col, args.label_col)
    rows = []
    splits = study_splits(ds, args.n_train, args.n_test, args.splits, args.seed)
    # the sizes run, not those asked for: a pool caps them, repeated texts shrink a training sample
    trained, tested = [len(s.train.rows) for s in splits], [len(s.test.rows) for s in splits]
    for split in splits:
        split_rows = evaluate_split(split, models, args.embedding_model)
        rows += split_rows
        if not args.json:
            print(
                f"split {split.index}: " + "  ".join(f"{r.model_id}={r.accuracy:.3f}" for r in split_rows),
                file=sys.stderr,
            )
    summary = summarize(rows)
    if args.json:
        print(
            json.dumps(
                {
                    "dataset": ds.name,
                    "source": ds.source,
                    "fingerprint": ds.fingerprint,
                    "embedding_model": args.embedding_model,
                    "n_train": max(trained),  # each row says its split's
                    "n_test": max(tested),
                    "asked": {"n_train": args.n_train, "n_test": args.n_test},
                    "seed": args.seed,
                    "summary": summary,
                    "rows": [r.__dict__ for r in rows],
                },
                indent=2,
            )
        )
        return 0
    n_train, n_test = _sizes(trained), _sizes(tested)
    asked = "" if (n_train, n_test) == (str(args.n_train), str(args.n_test)) else " (fewer than asked)"
    print(
        f"\n{ds.name}: {args.splits} split(s) of {n_train} train / {n_test} test texts{asked}, seed {args.seed}"
    )
    print(f"{'model':<20} {'accuracy':>10} {'std':>7} {'predict ms':>11}")
    for s in summary:
        print(
            f"{s['model']:<20} {s['accuracy_mean']:>10.4f} {s['accuracy_std']:>7.4f} {s['predict_s_mean'] * 1e3:>11.1f}"
        )
    return 0


def _sizes(sizes: list[int]) -> str:
    """Sample sizes over splits: ``200``, or ``187-200`` where they differ."""
    low_high = sorted(set(sizes))
    return str(low_high[0]) if len(low_high) == 1 else f"{low_high[0]}-{low_high[-1]}"


class _Parser(argparse.ArgumentParser):
    """Every parser of the command (subcommands inherit the class): a bad argument is a `UsageError`,
    one line naming the argument, like every other input the user can fix."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # The innermost (sub)command that left arguments over names itself: argparse reports them
        # from the top parser, and `accuwatt report r --country X` said "see `accuwatt --help`",
        # which lists no flag of `report`.
        ns, extras = super().parse_known_args(args, namespace)
        if extras and getattr(ns, _LEFT_OVER_IN, None) is None:
            setattr(ns, _LEFT_OVER_IN, self.prog)
        return ns, extras

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = getattr(ns, _LEFT_OVER_IN, None) or self.prog
            raise UsageError(f"unrecognized arguments: {' '.join(extras)} (see `{prog} --help`)")
        return ns


_LEFT_OVER_IN = "_accuwatt_unrecognized_in"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="accuwatt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"accuwatt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the traditional models on study splits and save them")
    _dataset_args(p, splits=1)
    p.add_argument("--split-index", type=non_negative_int, default=0, help="first split index")
    p.add_argument(
        "--out", default="artifacts/demo", help="artifacts folder (one sub-folder per split if --splits > 1)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="train and evaluate in-process (no Serve): the quick baseline")
    _dataset_args(p, splits=10)
    p.set_defaults(func=cmd_evaluate)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """An error's message as one line: a service's answer quoted in it may hold line breaks."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def os_message(exc: OSError) -> str:
    """A file-system error as ``<path>: <reason>`` (``[Errno 20] Not a directory: 'x'`` as ``x: Not a
    directory``)."""
    return f"{exc.filename}: {exc.strerror or one_line(exc) or type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    """Run a command; input the user can fix (`UsageError`) ends it with one line and status 2; a
    service that never became ready (`NotReadyError`: nothing or something else listens at the URL, a
    classifier failed to load, the API key is refused) or a file the command could not write or read
    (an `OSError` that names a file: a file where a folder must be, no permission, a full disk) with
    one line and status 1. Other errors keep their traceback: they are not the user's to fix."""
    try:
        try:
            args = build_parser().parse_args(argv)
            return int(args.func(args) or 0)
        finally:
            sys.stdout.flush()  # what is still buffered fails here, not at the interpreter's exit
    except BrokenPipeError:  # the reader went away (`accuwatt evaluate --json | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE  # the shell's status for a pipe's writer
    except UsageError as exc:
        print(f"accuwatt: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except NotReadyError as exc:
        print(f"accuwatt: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:  # a timeout, a connection: not a file the user can mend
            raise
        print(f"accuwatt: error: {os_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
