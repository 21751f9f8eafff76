"""Shared by the command-line unit tests: a guard that no Ray starts (not a stub of the code under test:
bad input must be refused before any Ray starts, so a command that gets that far fails the test instead
of running for minutes) and the check of a one-line refusal."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from serve_app.cli import main


class NoRay(RuntimeError):
    """A unit test reached a Ray start."""


def forbid_ray(monkeypatch: pytest.MonkeyPatch, error: type[Exception] = AssertionError) -> None:
    """Make ``ray.init`` and Ray's own ``Cluster`` raise ``error``."""
    import ray
    import ray.cluster_utils

    def refuse(*args: object, **kwargs: object) -> None:
        raise error("a unit test reached a Ray start: the input was not refused first")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray.cluster_utils, "Cluster", refuse)


@contextlib.contextmanager
def cluster_env_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give back the process environment and Ray's loopback switch that a local cluster's start sets."""
    import ray._private.ray_constants as rc

    monkeypatch.setattr(rc, "ENABLE_RAY_CLUSTER", rc.ENABLE_RAY_CLUSTER)
    env = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)


def one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``accuwatt argv``; assert exit 2 and exactly one ``accuwatt: error:`` line; return it."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("accuwatt: error: "), err
    return lines[0]
