"""SIGTERM as Ctrl-C: the long-running commands (``demo``, ``replay --local``, ``sweep``, ``monitoring
up``) unwind through their ``finally`` blocks on SIGTERM, so what they started stops and the temporary
folders they made go, and they exit with `TERMINATED_EXIT`."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TERMINATED_EXIT = 128 + signal.SIGTERM
"""The exit status of a command ended by SIGTERM once it has cleaned up (the shell's convention)."""


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM as an exception in the main thread: it unwinds through the ``finally`` blocks, as Ctrl-C
    does. Further SIGTERMs are ignored while those run (the handler before is restored at the end of
    the block)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("accuwatt: terminated (SIGTERM): stopping and cleaning up", file=sys.stderr, flush=True)
    raise SystemExit(TERMINATED_EXIT)


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # the only one that may set handlers


def rearm_sigterm() -> None:
    """Install our SIGTERM handler again, inside `sigterm_unwinds`, after code that replaced it
    (``ray.init``: its core worker's handler aborts the process, skipping every cleanup)."""
    if on_main_thread():
        signal.signal(signal.SIGTERM, _terminated)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside the block SIGTERM raises `SystemExit` (`_terminated`) instead of ending the process where
    it stands; the handler before is back after the block. Off the main thread the block runs as is."""
    if not on_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        exc = sys.exc_info()[1]
        if previous is _terminated and isinstance(exc, SystemExit) and exc.code == TERMINATED_EXIT:
            previous = signal.SIG_IGN  # still unwinding from a SIGTERM: an outer block's cleanup goes on
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
