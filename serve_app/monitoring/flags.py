"""argparse types of the monitoring flags (and of ``accuwatt replay --pushgateway``): a value that
cannot work is refused in one line before anything starts, never written into a config Prometheus
refuses or that leaves its rules without data."""

from __future__ import annotations

import argparse
import re

from serve_app.argtypes import prometheus_duration
from serve_app.monitoring.queries import RATE_WINDOW

_HOST_PORT = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?):(?P<port>[0-9]{1,5})$"
)
_UNIT_S = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def host_port(text: str) -> str:
    """An argparse type: ``HOST:PORT`` as a Prometheus static target takes it (a host name, an IPv4
    address or a bracketed IPv6 address; port 1-65535; no scheme, no path)."""
    m = _HOST_PORT.match(text)
    if m is None or not 1 <= int(m["port"]) <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT such as 127.0.0.1:9091 (no scheme, no path), got {text!r}"
        )
    return text


def duration_s(text: str) -> float:
    """Seconds of a Prometheus duration (``1m30s`` -> 90.0); the text must be one (`prometheus_duration`)."""
    return sum(int(n) * _UNIT_S[unit] for n, unit in re.findall(r"([0-9]+)(ms|[ywdhms])", text))


MAX_SCRAPE_INTERVAL_S = duration_s(RATE_WINDOW) / 4
"""The longest scrape (and rule evaluation) interval the rules work with: every ``rate1m`` rule needs
samples inside its window, and Prometheus' own advice is a window of at least four scrape intervals."""


def scrape_interval(text: str) -> str:
    """An argparse type: a Prometheus duration no longer than `MAX_SCRAPE_INTERVAL_S`."""
    prometheus_duration(text)
    if duration_s(text) > MAX_SCRAPE_INTERVAL_S:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_SCRAPE_INTERVAL_S:g}s (a quarter of the rules' {RATE_WINDOW} rate "
            f"window; longer intervals leave every rate rule without data), got {text!r}"
        )
    return text


def user_password(text: str) -> tuple[str, str]:
    """An argparse type: ``USER:PASSWORD`` (the password may hold colons; it is never echoed)."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("must be USER:PASSWORD (a user name, a colon, the password)")
    return user, password
