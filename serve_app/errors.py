"""Errors the user can fix from the command line (`accuwatt` prints them as one line, exit status 2)."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: an unknown model id, a dataset whose labels a model does not know."""
