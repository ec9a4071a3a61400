"""Waiting for a server to become healthy, with its startup phases read from the log (I/O).

Works for any :class:`~harness.runtime.base.ServerHandle` (local or container): it follows
``server.log`` in the run directory, polls ``/health`` with a short timeout, and stops at the
startup deadline, when the server exits, or when the log has been silent for too long.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.engines.base import StartupPhase
from harness.runtime.base import ServerHandle
from harness.watchdog.rules import Verdict, startup_verdict

Outcome = Literal["healthy", "exited", "timeout", "log-silence", "interrupted"]

_OUTCOME_OF_RULE: dict[str, Outcome] = {
    "exit": "exited",
    "health-deadline": "timeout",
    "log-silence": "log-silence",
}


@dataclass
class StartupResult:
    """How the wait ended, and what was seen on the way."""

    outcome: Outcome
    elapsed_s: float
    phases: list[tuple[str, float]] = field(default_factory=list)
    exit_code: int | None = None
    last_log_line_age_s: float | None = None
    #: What the startup rule decided when the start failed (``None`` when healthy).
    verdict: Verdict | None = None

    @property
    def healthy(self) -> bool:
        return self.outcome == "healthy"


class LogFollower:
    """Reads the lines appended to a file since the last call (never blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(1 << 20)
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in complete]


def match_phase(line: str, phases: tuple[StartupPhase, ...]) -> str | None:
    """The last (most advanced) phase whose pattern matches ``line``."""
    found = None
    for candidate in phases:
        if candidate.pattern.search(line):
            found = candidate.name
    return found


def wait_until_healthy(
    handle: ServerHandle,
    phases: tuple[StartupPhase, ...],
    *,
    deadline_s: float,
    log_silence_s: float | None = None,
    on_phase: Callable[[str, float], None] | None = None,
    on_tick: Callable[[float, str | None], None] | None = None,
    poll_interval_s: float = 0.5,
    health_timeout_s: float = 2.0,
) -> StartupResult:
    """Poll until ``/health`` answers 200, the server exits, or a deadline passes.

    The decision to give up is :func:`~harness.watchdog.rules.startup_verdict` (pure); the
    returned result carries its verdict, which is what a startup incident records."""
    # Imported here, after the server was spawned: httpx costs ~0.1 s to import, which would
    # otherwise delay every engine's start (benchmarks/serve_overhead.py).
    import httpx

    start = time.monotonic()
    follower = LogFollower(handle.run.server_log)
    seen: list[tuple[str, float]] = []
    last_line_at = start
    current: str | None = None
    with httpx.Client(timeout=health_timeout_s, trust_env=False) as client:
        while True:
            now = time.monotonic()
            elapsed = now - start
            lines = follower.new_lines()
            if lines:
                last_line_at = now
            for line in lines:
                name = match_phase(line, phases)
                if name and name != current and name not in {n for n, _ in seen}:
                    current = name
                    seen.append((name, elapsed))
                    if on_phase:
                        on_phase(name, elapsed)
            code = handle.poll()
            healthy = False
            if code is None:
                with contextlib.suppress(httpx.HTTPError):
                    healthy = client.get(handle.spec.health_url).status_code == 200
            if healthy:
                return StartupResult("healthy", time.monotonic() - start, seen)
            now = time.monotonic()
            verdict = startup_verdict(
                now=now,
                started_at=start,
                deadline_s=deadline_s,
                healthy=False,
                exit_code=code,
                last_log_at=last_line_at,
                log_silence_s=log_silence_s,
            )
            if verdict is not None:
                return StartupResult(
                    _OUTCOME_OF_RULE[verdict.rule],
                    now - start,
                    seen,
                    exit_code=code,
                    last_log_line_age_s=now - last_line_at,
                    verdict=verdict,
                )
            if on_tick:
                on_tick(elapsed, current)
            time.sleep(min(poll_interval_s, max(0.0, deadline_s - elapsed)))
