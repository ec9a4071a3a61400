"""Load a healthy server while the watchdog watches it (I/O): the inner step of soak and compare.

:func:`load_under_watch` runs one :class:`~harness.load.runner.LoadRunner` in this thread's event
loop and :func:`~harness.watchdog.monitor.watch_server` in a background thread, with the
campaign's hang policy: the first incident is captured (stacks of every process while the hang
is live), the load stops sending and aborts what is in flight (recorded as ``aborted``, so every
request sent is accounted for once), the server is stopped, and the caller decides what comes
next (a soak restarts, a compare cell records the hang and moves on).

Ctrl-C, SIGTERM and SIGHUP stop the load cleanly (the summary is still written) and then raise
:class:`KeyboardInterrupt` / :class:`~harness.campaign.signals.Terminated` so the campaign can
stop its server and write its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.campaign.signals import Terminated
from harness.load.interrupt import run_interruptibly
from harness.load.runner import LoadConfig, LoadRunner
from harness.load.tokenizer import PromptTokenizer
from harness.runtime.base import ServerHandle

if TYPE_CHECKING:
    from harness.console import Console
    from harness.watchdog.capture import CaptureOptions, Incident


@dataclass
class Segment:
    """What one load segment did."""

    summary: dict[str, Any] | None
    incidents: list[Incident] = field(default_factory=list)
    watch_code: int = 0
    started_at: float = 0.0  # wall clock, when the load began
    ended_at: float = 0.0  # wall clock, when the last request finished or was aborted
    stopped_by: str = "done"  # done | incident | server-exit

    @property
    def hung(self) -> bool:
        return bool(self.incidents)


class RemoteStop:
    """Stops a runner from another thread (the watchdog's), before or while it runs."""

    def __init__(self, runner: LoadRunner) -> None:
        self.runner = runner
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: str | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called in the runner's loop before it starts."""
        with self._lock:
            self._loop = loop
            pending = self._pending
        if pending is not None:
            self.runner.stop(pending, hard=True)

    def stop(self, reason: str) -> None:
        """Thread-safe: stop sending and abort what is in flight."""
        with self._lock:
            loop = self._loop
            if loop is None:
                self._pending = self._pending or reason
                return
        with contextlib.suppress(RuntimeError):  # the loop already closed: the load is over
            loop.call_soon_threadsafe(lambda: self.runner.stop(reason, hard=True))


def run_load_interruptibly(
    runner: LoadRunner, remote: RemoteStop | None = None
) -> tuple[dict[str, Any], int | None]:
    """Run ``runner`` to its end (:func:`harness.load.interrupt.run_interruptibly`: the first
    Ctrl-C / SIGTERM / SIGHUP stops it with its summary written, a second cancels it and is
    raised at once). ``remote`` lets another thread stop it. Returns (summary, the stopping
    signal or None)."""
    outcome = run_interruptibly(runner, on_loop=remote.attach if remote is not None else None)
    if outcome.summary is None:  # a second signal cancelled it (summary.json is written)
        raise_for_signal(outcome.signum)
        raise KeyboardInterrupt
    return outcome.summary, outcome.signum


def raise_for_signal(signum: int | None) -> None:
    """Re-raise a stop signal the load absorbed, as the exception the campaign handles."""
    if signum is None:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def load_under_watch(
    handle: ServerHandle,
    config: LoadConfig,
    *,
    out_dir: Path,
    console: Console | None = None,
    watch: bool = True,
    tokenizer: PromptTokenizer | None = None,
    capture_options: CaptureOptions | None = None,
    on_runner: Callable[[LoadRunner], None] | None = None,
) -> Segment:
    """One load segment against ``handle``'s healthy server, watched (see the module
    docstring). ``on_runner`` receives the runner before it starts (for a progress display).
    Raises KeyboardInterrupt / Terminated after a clean stop when harness was interrupted."""
    from harness.watchdog.monitor import watch_server

    spec = handle.spec
    runner = LoadRunner(config, base_url=spec.base_url, out_dir=out_dir, tokenizer=tokenizer)
    if on_runner is not None:
        on_runner(runner)
    segment = Segment(summary=None, started_at=time.time())
    stop_event = threading.Event()
    remote = RemoteStop(runner)
    thread: threading.Thread | None = None

    def on_incident(incident: Incident) -> None:
        segment.incidents.append(incident)
        segment.stopped_by = "incident"
        remote.stop(f"incident: {incident.verdict.kind}")

    if watch and spec.watch.enabled:
        # Campaign policy: capture the first hang, then stop this server (the caller restarts
        # or moves on); the plan's keep/restart applies to `harness serve` only.
        settings = spec.watch.model_copy(update={"on_hang": "stop"})

        def watch_body() -> None:
            segment.watch_code = watch_server(
                handle,
                settings,
                console=console,
                stop_event=stop_event,
                on_incident=on_incident,
                capture_options=capture_options,
            )
            if segment.watch_code and not segment.incidents:
                segment.stopped_by = "server-exit"
            if segment.watch_code:
                remote.stop("the server stopped")

        thread = threading.Thread(target=watch_body, name="harness-campaign-watch", daemon=True)
        thread.start()
    try:
        summary, signum = run_load_interruptibly(runner, remote)
    finally:
        stop_event.set()
        if thread is not None:
            # A capture in progress finishes (each of its steps has a deadline).
            thread.join(timeout=600)
    segment.summary = summary
    segment.ended_at = time.time()
    raise_for_signal(signum)
    return segment
