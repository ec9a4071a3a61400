"""Terminal output shared by the commands: consoles and the live startup display.

Output that is not a terminal (a log file, a CI job, a pipe) is never wrapped: paths and run ids
stay on one line so they can be copied and grepped.
"""

from __future__ import annotations

import sys
from typing import IO

from rich.console import Console
from rich.status import Status

from harness.spec import LaunchSpec

#: Width used when the output is not a terminal: wide enough that no line is ever wrapped.
_UNWRAPPED_WIDTH = 10_000


def make_console(*, stderr: bool = True, file: IO[str] | None = None) -> Console:
    """A rich console on stderr (or ``file``) that wraps only on a real terminal."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    console = Console(file=stream)
    if not console.is_terminal:
        console = Console(file=stream, width=_UNWRAPPED_WIDTH, soft_wrap=True)
    return console


class StartupDisplay:
    """The startup phases as they happen, with a spinner naming the current one and the time
    left before the deadline (a :class:`~harness.campaign.server.StartupObserver`)."""

    def __init__(self, console: Console, spec: LaunchSpec, *, quiet: bool = False) -> None:
        self.console = console
        self.spec = spec
        self.quiet = quiet
        self._status: Status | None = None

    def on_phase(self, name: str, elapsed_s: float) -> None:
        if not self.quiet:
            self.console.print(f"  [green]✓[/] {name} [dim]({elapsed_s:.1f} s)[/]")

    def on_tick(self, elapsed_s: float, phase: str | None) -> None:
        spec = self.spec
        left = spec.deadlines.startup_s - elapsed_s
        text = (
            f"starting {spec.engine} (tp={spec.tp}): {phase or 'launching'} "
            f"[dim]{elapsed_s:.0f} s, deadline in {left:.0f} s[/]"
        )
        if self._status is None:
            if not self.console.is_terminal:
                return
            self._status = self.console.status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def on_end(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
