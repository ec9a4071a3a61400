"""SIGTERM and SIGHUP stop harness the way Ctrl-C does (I/O: process signal handlers).

A campaign or ``harness serve`` killed by ``kill``, a closed terminal or a job scheduler must
still stop its servers and write what it recorded; Python only turns SIGINT into an exception.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(Exception):
    """SIGTERM or SIGHUP reached harness (handled like Ctrl-C: stop cleanly, keep records)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Inside the block SIGTERM/SIGHUP raise :class:`Terminated` in the main thread; the
    previous handlers come back afterwards. Outside the main thread it does nothing (Python
    only delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
