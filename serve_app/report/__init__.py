"""``accuwatt report``: the study's tables and figures from replay run folders."""

from serve_app.report.cli import register

__all__ = ["register"]
