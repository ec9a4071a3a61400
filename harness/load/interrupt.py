"""Run a load to its end in its own event loop, stopping cleanly on Ctrl-C, SIGTERM or SIGHUP
(I/O: signal handlers). ``harness load`` and the campaigns' load steps both run through
:func:`run_interruptibly`.

The first stop signal stops the load: nothing more is sent, the requests in flight are aborted
and recorded, ``summary.json`` is written. A second one cancels outright (the summary is still
written by the runner on its way out). Nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from harness.eventloop import event_loop_factory
from harness.load.runner import LoadRunner, Summary

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class LiveDisplay(Protocol):
    """Something shown while the load runs (a progress line), started and stopped inside the
    load's event loop."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How the load ended: its summary (None when a second signal cancelled it; its
    ``summary.json`` is written all the same) and the first stop signal (None: it ran to its
    end, or another thread stopped it)."""

    summary: Summary | None
    signum: int | None


@contextlib.contextmanager
def _restored_signal_handlers() -> Iterator[None]:
    """asyncio's ``remove_signal_handler`` resets to SIG_DFL; put the handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


def run_interruptibly(
    runner: LoadRunner,
    *,
    on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None,
    display: LiveDisplay | None = None,
) -> Outcome:
    """Run ``runner`` to its end in a fresh event loop (see the module docstring).

    ``on_loop`` receives the loop before the load starts (another thread stopping the runner
    calls into it); ``display`` is started and stopped around the load. Outside the main thread
    signals cannot be handled here: the load then runs without stop handlers.
    """
    received: list[int] = []

    async def main() -> Summary | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if on_loop is not None:
            on_loop(loop)

        def on_signal(signum: int) -> None:
            if received and task is not None:
                task.cancel()
            received.append(signum)
            runner.stop("interrupted", hard=True)

        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, sig)
        if display is not None:
            display.start()
        try:
            return await runner.run()
        except asyncio.CancelledError:
            if not received:
                raise
            return None
        finally:
            if display is not None:
                display.stop()

    with _restored_signal_handlers(), asyncio.Runner(loop_factory=event_loop_factory()) as r:
        summary = r.run(main())
    return Outcome(summary, received[0] if received else None)
