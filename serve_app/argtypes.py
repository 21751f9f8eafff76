"""Checked values for the ``accuwatt`` command line, and one-line messages from config errors.

Each numeric flag names its range through an argparse ``type=`` from here, so an impossible value
(``--concurrency 0``, ``--n-train -5``, ``--workers -1``) is refused before anything runs, never
replaced by another value or left to fail later with a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from serve_app.errors import UsageError


def int_at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer ``>= lo`` (and ``<= hi`` when given)."""
    what = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{lo}"
    return parse


def float_above(lo: float, *, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number ``> lo`` (``>= lo`` when ``inclusive``)."""
    what = f"a number {'>=' if inclusive else '>'} {lo:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (value == lo and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = f"float_above_{lo:g}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
port = int_at_least(1, 65535)
positive_float = float_above(0)
non_negative_float = float_above(0, inclusive=True)

# Prometheus's duration syntax (model.ParseDuration): units in this order, each at most once.
_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")


def prometheus_duration(text: str) -> str:
    """An argparse type: a non-zero Prometheus duration (``15s``, ``1m30s``, ``500ms``)."""
    if not text or not _DURATION.match(text) or not any(c in "123456789" for c in text):
        raise argparse.ArgumentTypeError(
            f"must be a non-zero Prometheus duration such as 15s, 1m or 500ms, got {text!r}"
        )
    return text


def http_url(text: str) -> str:
    """An argparse type: an ``http://`` or ``https://`` URL with a host (``http://127.0.0.1:8000``); a
    bare ``host:port`` or a word is refused here, never left to a client that waits on it."""
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 (a port out of range or not a number raises ValueError)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(
            f"must be an http(s) URL with a host such as http://127.0.0.1:8000, got {text!r}"
        )
    return text


def check_output_folder(path: str | Path, flag: str) -> None:
    """Refuse (`UsageError`) an output folder that cannot be made or written in: a file where it (or
    one of its parents) would be, or a folder this user may not write in. Checked before the work that
    fills it (training, a replay's requests), not met as a traceback when its first file is written;
    nothing is created here."""
    folder = Path(path)
    nearest = folder
    while not (nearest.exists() or nearest.is_symlink()) and nearest.parent != nearest:
        # up to the part that exists (a dangling link too); the rest would be made
        nearest = nearest.parent
    if not nearest.is_dir():
        what = "" if nearest == folder else f"cannot be made: {nearest} "
        raise UsageError(f"{flag} {path}: {what}exists and is not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: no permission to write in {nearest}")


def installed(module: str) -> bool:
    """Can the Python package ``module`` be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # imported already, without a spec
        return True
    except ImportError:  # a dotted name whose parent package is missing
        return False


def require_package(module: str, what: str, extra: str, dist: str | None = None) -> None:
    """Refuse (`UsageError`) ``what`` when the Python package ``module`` cannot be imported, naming the
    install profile that has it (``scripts/setup.sh test`` installs every extra but ``llm-gpu``) and the
    extra ``extra`` that holds it (``dist``: its name on PyPI, default ``module``)."""
    if not installed(module):
        raise UsageError(
            f"{what} needs the Python package {dist or module}, which is not installed: install the test "
            f"profile (bash scripts/setup.sh test) or pip install 'accuwatt[{extra}]'"
        )


def first_error(exc: Any, flags: Mapping[str, str] | None = None) -> str:
    """The first problem of a pydantic ``ValidationError`` as ``where: what``. ``flags`` maps a
    field name to the command-line flag that sets it (default ``--field-name``); without it the
    dotted location is named."""
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:
        return msg
    if flags is not None:
        field = loc[-1]
        return f"{flags.get(field, '--' + field.replace('_', '-'))}: {msg}"
    return f"{'.'.join(loc)}: {msg}"


def yaml_message(exc: BaseException) -> str:
    """A YAML syntax error in one short line: ``line L, column C: <problem>``."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"not valid YAML: line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"not valid YAML: {' '.join(str(exc).split())}"


def config_error(where: str, exc: BaseException, flags: Mapping[str, str] | None = None) -> UsageError:
    """A `UsageError` for a config built from ``where`` (a file or the flags) that failed to load:
    pydantic's first problem, a YAML syntax error (``yaml.YAMLError``), an unreadable or undecodable
    file."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        detail = first_error(exc, flags)
    elif isinstance(exc, UnicodeDecodeError):
        detail = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
    else:  # yaml.YAMLError
        detail = yaml_message(exc)
    return UsageError(f"{where}: {detail}" if where else detail)
