"""One exception tree for the whole package.

Every error the user can cause or fix carries the exit code the CLI returns and, where there
is one, the next thing to try (``hint``). The CLI prints ``error: <message>`` and the hint on
one more line; it never prints a traceback for a ``HarnessError``.

Exit codes (docs/architecture.md): 0 success; 1 the thing under test failed (hang found, check
failed); 2 bad input; 3 environment problem.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error harness raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class BadInput(HarnessError):
    """The user's input is wrong (usage, profile, workload, model path): exit 2."""

    exit_code = 2


class ProfileError(BadInput):
    """A profile file is malformed, has an unknown key or a wrong type, or does not exist."""


class WorkloadError(BadInput):
    """A workload file is malformed or names something that does not exist."""


class PlanError(BadInput):
    """The requested launch cannot be planned (TP=0, missing model path, bad engine argument)."""


class RunNotFound(BadInput):
    """A run id or run directory that does not exist."""


class EnvironmentProblem(HarnessError):
    """Something outside harness is missing or refuses: engine not installed, Docker down,
    port busy, a ulimit the host refuses: exit 3."""

    exit_code = 3


class EngineNotInstalled(EnvironmentProblem):
    """The engine's Python package or command cannot be found."""


class PortInUse(EnvironmentProblem):
    """The port the server should listen on is already taken."""


class DockerProblem(EnvironmentProblem):
    """The Docker engine is unreachable or refused a container setting."""


class CheckFailed(HarnessError):
    """The thing under test failed: the server never became healthy, a hang was found: exit 1."""

    exit_code = 1


class StartupFailed(CheckFailed):
    """The server exited or missed its startup deadline."""


class HangDetected(CheckFailed):
    """A watchdog rule fired."""
