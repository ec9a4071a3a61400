"""What every runtime returns: a handle on one running server.

The campaign and watchdog layers only talk to servers through :class:`ServerHandle`, so the
same startup wait, watchdog and capture work for a local process group and for a container.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from harness.rundir import RunDir
from harness.spec import LaunchSpec


@runtime_checkable
class ServerHandle(Protocol):
    """A started server. Every method returns promptly (no unbounded waits)."""

    spec: LaunchSpec
    run: RunDir

    def root_pid(self) -> int | None:
        """Host PID of the server's top process (the engine's main process), if known."""

    def pids(self) -> list[int]:
        """Host PIDs of every live process of the server (root first, then descendants)."""

    def poll(self) -> int | None:
        """The exit code if the server has exited, else ``None``."""

    def stop(self, grace_s: float | None = None) -> int | None:
        """Stop the whole server: SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns the
        exit code when known. Safe to call twice."""

    def describe(self) -> str:
        """One line for humans: what runs where (pid / container name)."""


class Runtime(Protocol):
    """Starts a LaunchSpec; ``server.log`` in the run directory receives all output."""

    def start(self, spec: LaunchSpec, run: RunDir) -> ServerHandle:
        """Start the server and return at once (the caller waits for health)."""
