"""Model ids on the command line: one syntax for every command and a check against the ids that exist.

``--models a b``, ``--models a,b`` and ``--models a, b`` all mean the same two ids (order kept, repeats
dropped). An id that does not exist is refused with its name and the ids that do, never replaced by
another model or taken as one id with a comma in it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from serve_app.errors import UsageError


class UnknownModelError(UsageError):
    """A model id that the command cannot use."""


def split_ids(values: Iterable[str]) -> list[str]:
    """Ids from space- and/or comma-separated arguments, in order, without repeats or blanks."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


class _IdsAction(argparse.Action):
    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        ids = split_ids([values] if isinstance(values, str) else values)
        if not ids:
            raise UsageError(f"{option} needs at least one id")
        setattr(namespace, self.dest, ids)


def add_ids_argument(p: Any, flag: str, help_text: str, default: Any = None) -> None:
    """``flag ID [ID ...]``, where each ID may itself be a comma-separated list."""
    p.add_argument(flag, nargs="+", action=_IdsAction, default=default, metavar="ID", help=help_text)


def add_models_argument(p: Any, help_text: str, default: Any = None) -> None:
    """The ``--models`` option every command shares."""
    add_ids_argument(p, "--models", help_text + " (space- or comma-separated)", default)


def check_ids(ids: Sequence[str], known: Iterable[str], where: str, what: str = "model id") -> list[str]:
    """``ids`` if all are in ``known``; else `UnknownModelError` naming the unknown ones and ``known``."""
    known_list = sorted(set(known))
    unknown = [i for i in ids if i not in known_list]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise UnknownModelError(
            f"unknown {what}{plural} {', '.join(map(repr, unknown))}; {where}: {', '.join(known_list) or 'none'}"
        )
    return list(ids)
