"""``harness serve`` as a library: start, wait healthy, watch (or detach), stop; plus the
``ps`` and ``down`` views of the servers harness started.

:func:`serve` is the whole foreground lifecycle: Ctrl-C, SIGTERM and SIGHUP stop every server it
started; a failed start is captured and the server kept or stopped by the plan's ``on_hang``; a
healthy server is watched until it exits or harness is stopped, restarted under the same plan on
``--on-hang restart``; with ``detach`` the server is left running with a background watcher
(:mod:`harness.campaign.watcher`) and, for a container, a background log follower.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.campaign.server import (
    Launch,
    StartupObserver,
    check_engine_installed,
    hand_over,
    launch,
    startup_hint,
    startup_message,
    stop_servers,
)
from harness.campaign.signals import Terminated, terminate_on_signals
from harness.errors import HangDetected, StartupFailed
from harness.rundir import RunDir, list_runs, open_run
from harness.runtime.base import ServerHandle
from harness.runtime.local import check_port_free, local_run_alive, stop_local_run, tail_lines
from harness.spec import LaunchSpec

if TYPE_CHECKING:
    from harness.watchdog.capture import Console, Incident


@dataclass
class ServeOutcome:
    """What a foreground serve saw (for the caller's last lines)."""

    run: RunDir
    incidents: list[Incident] = field(default_factory=list)
    detached: bool = False
    watcher_pid: int | None = None
    log_follower_pid: int | None = None


def prepare_run(
    spec: LaunchSpec, *, preflight: Callable[[LaunchSpec], None] | None = None
) -> RunDir:
    """Check what can be checked before anything starts (``preflight``: ``serve --preflight``'s
    checks, raising to refuse the start), then create the run directory and record the plan
    (the one place a run's ``launch_spec.json`` is written)."""
    check_engine_installed(spec)
    # Both runtimes listen on this host's port (host network or a published port).
    check_port_free(spec.host, spec.port)
    if preflight is not None:
        preflight(spec)
    run = RunDir(Path(spec.run_dir)).create()
    run.write_launch_spec(spec)
    return run


def serve(
    spec: LaunchSpec,
    run: RunDir,
    console: Console,
    *,
    detach: bool = False,
    observer: StartupObserver | None = None,
) -> ServeOutcome:
    """Run ``harness serve`` for ``spec`` in ``run`` (see the module docstring).

    Raises :class:`StartupFailed` when the server never became healthy (or exited),
    :class:`HangDetected` when the watch ended on a hang or crash, or was stopped after one.
    Returns normally when stopped (Ctrl-C, SIGTERM, SIGHUP) with nothing found, or detached.
    """
    outcome = ServeOutcome(run)
    live: list[ServerHandle] = []
    keep_running = False
    try:
        with terminate_on_signals():
            try:
                first = launch(
                    spec,
                    run,
                    observer=observer,
                    console=console,
                    on_started=_started(live, console),
                )
                if not first.healthy:
                    keep_running = _report_failed_start(first, console)
                    raise StartupFailed(
                        startup_message(spec, first.startup),
                        hint=startup_hint(spec, first.startup),
                    )
                console.print(
                    f"[bold green]ready[/] in {first.startup.elapsed_s:.1f} s: {spec.base_url} "
                    f"(model {spec.served_model_name!r})"
                )
                if detach:
                    keep_running = True
                    _detach(first.handle, outcome, console)
                    return outcome
                _watch_foreground(first.handle, live, outcome, console, observer)
            except (KeyboardInterrupt, Terminated):
                console.print("stopping ...")
    finally:
        if not keep_running:
            stop_servers(live, run)
            if live:
                console.print(f"stopped; run directory: {run.path}")
        elif not detach:
            # A server kept for inspection after a failed start: its log goes on too.
            for handle in live:
                hand_over(handle)
    if outcome.incidents:
        last = outcome.incidents[-1]
        raise HangDetected(
            f"{last.verdict.kind}: {last.headline}",
            hint=f"read {last.summary_path} ({len(outcome.incidents)} incident(s) in this run)",
        )
    return outcome


def _detach(handle: ServerHandle, outcome: ServeOutcome, console: Console) -> None:
    from harness.campaign.watcher import spawn_watcher

    run = handle.run
    outcome.detached = True
    outcome.log_follower_pid = hand_over(handle)
    if handle.spec.watch.enabled:
        outcome.watcher_pid = spawn_watcher(run, handle.spec).pid
    run.write_state(detached=True)
    extras = []
    if outcome.watcher_pid:
        extras.append(f"watcher pid {outcome.watcher_pid}, log {run.path / 'watchdog.log'}")
    if outcome.log_follower_pid:
        extras.append(f"log follower pid {outcome.log_follower_pid}")
    console.print(
        f"detached; stop it with: harness down {run.run_id}"
        + (f" ({'; '.join(extras)})" if extras else "")
    )


def _watch_foreground(
    handle: ServerHandle,
    live: list[ServerHandle],
    outcome: ServeOutcome,
    console: Console,
    observer: StartupObserver | None,
) -> None:
    """Watch until the server exits or harness is stopped; raise when it exited on its own."""
    spec, run = handle.spec, handle.run
    console.print("Ctrl-C stops the server.")
    stop_event = threading.Event()

    def restart() -> ServerHandle:
        """--on-hang restart: a fresh server under the same plan and run directory."""
        fresh = launch(
            spec, run, observer=observer, console=console, on_started=_started(live, console)
        )
        if not fresh.healthy:
            raise StartupFailed("restart after a hang: " + startup_message(spec, fresh.startup))
        run.write_state(status="healthy", restarts=len(live) - 1)
        console.print(f"[bold green]restarted[/] in {fresh.startup.elapsed_s:.1f} s")
        return fresh.handle

    if spec.watch.enabled:
        from harness.watchdog.monitor import watch_server

        code = watch_server(
            handle,
            spec.watch,
            console=console,
            stop_event=stop_event,
            restart=restart,
            on_incident=outcome.incidents.append,
        )
    else:
        code = _wait_until_exit(handle, stop_event)
    if code != 0 and not outcome.incidents:
        console.print(f"[red]server stopped[/] (see {run.server_log})")
        console.print("\n".join(tail_lines(run.server_log, 15)), markup=False, highlight=False)
        raise StartupFailed(f"the server exited with code {live[-1].poll()}")


def _started(live: list[ServerHandle], console: Console) -> Callable[[ServerHandle], None]:
    def started(handle: ServerHandle) -> None:
        live.append(handle)
        console.print(f"started {handle.spec.engine}: {handle.describe()}")

    return started


def _wait_until_exit(handle: ServerHandle, stop_event: threading.Event) -> int:
    """Without a watchdog: block until the server exits (1) or harness is stopped (0)."""
    while not stop_event.is_set():
        if handle.poll() is not None:
            return 1
        stop_event.wait(0.5)
    return 0


def _report_failed_start(started: Launch, console: Console) -> bool:
    """Show the end of the log and the incident; True when the server is kept for a human."""
    handle, result = started.handle, started.startup
    spec, run = handle.spec, handle.run
    tail = tail_lines(run.server_log, 20)
    if tail:
        console.print("[dim]last lines of server.log:[/]")
        for line in tail:
            console.print(f"  {line}", markup=False, highlight=False, style="dim")
    if started.incident is not None:
        console.print(f"incident: {started.incident.summary_path}")
    keep = result.outcome != "exited" and spec.watch.on_hang == "keep"
    if keep:
        console.print(
            f"keeping the server for inspection: harness dump {spec.run_id}; "
            f"harness down {spec.run_id}"
        )
    return keep


# ---------------------------------------------------------------------------------------------
# ps and down


@dataclass(frozen=True)
class ServerRow:
    """One live server for ``harness ps``."""

    run_id: str
    runtime: str
    engine: str
    tp: str
    status: str
    where: str


def live_servers(root: Path, docker_rows: Callable[[], list[dict[str, Any]]]) -> list[ServerRow]:
    """Every live server under ``root`` (local process groups) plus labelled containers from
    ``docker_rows`` (a detached container is marked detached, not orphaned)."""
    from harness.campaign.watcher import watcher_alive

    rows: list[ServerRow] = []
    for run in list_runs(root):
        state = run.read_state()
        if state.get("runtime") == "nodes":
            rows += _nodes_row(run, state)
            continue
        if state.get("runtime") != "local" or not local_run_alive(state):
            continue
        spec = read_spec(run)
        status = str(state.get("status", "?"))
        if state.get("detached"):
            status += ", watched" if watcher_alive(run) else ", detached"
        rows.append(
            ServerRow(
                run.run_id,
                "local",
                spec.engine if spec else "?",
                str(spec.tp) if spec else "?",
                status,
                f"pid {state.get('pid')}" + (f" {spec.base_url}" if spec else ""),
            )
        )
    for row in docker_rows():
        run_dir = row.get("run_dir")
        state = RunDir(Path(run_dir)).read_state() if run_dir and Path(run_dir).is_dir() else {}
        status = str(row["status"])
        if state.get("detached"):
            status += ", detached"
        elif row.get("orphan"):
            status += " (orphan)"
        rows.append(
            ServerRow(row["run_id"], "docker", row["engine"], str(row["tp"]), status, row["name"])
        )
    return rows


def _nodes_row(run: RunDir, state: dict[str, Any]) -> list[ServerRow]:
    """A live multi-node run (its ssh clients live while their node's engine runs)."""
    from harness.procgroup import ProcessRef

    refs = [ProcessRef.from_dict(n.get("ssh")) for n in state.get("nodes") or []]
    if state.get("status") == "stopped" or not any(r is not None and r.alive() for r in refs):
        return []
    spec = read_spec(run)
    hosts = ", ".join(str(n.get("host")) for n in state.get("nodes") or [])
    engine, tp = (spec.engine, str(spec.tp)) if spec else ("?", "?")
    where = f"nodes {hosts}" + (f" {spec.base_url}" if spec else "")
    return [ServerRow(run.run_id, "nodes", engine, tp, str(state.get("status")), where)]


def _stop_nodes(run: RunDir) -> bool:
    """A multi-node run's engines, stopped on every node over ssh."""
    from harness.runtime.nodes import stop_nodes_run

    spec = read_spec(run)
    return spec is not None and stop_nodes_run(run, spec)


def read_spec(run: RunDir) -> LaunchSpec | None:
    """The run's plan, or None when it has none (or it is unreadable)."""
    try:
        return LaunchSpec.from_json(run.launch_spec.read_text())
    except (OSError, ValueError):
        return None


def down(
    root: Path,
    run_id: str | None,
    *,
    all_runs: bool,
    docker_down: Callable[[str | None, bool], list[str]] | None,
) -> tuple[list[str], str | None]:
    """Stop one run's server (or all): its background watcher first, so that the stop is not
    taken for a crash, then the server. Returns (what was stopped, a Docker problem if any)."""
    from harness.campaign.watcher import stop_watcher

    runs = list_runs(root) if all_runs else [open_run(root, run_id or "")]
    stopped: list[str] = []
    for run in runs:
        stop_watcher(run)
        stop = {"local": stop_local_run, "nodes": _stop_nodes}.get(
            run.read_state().get("runtime", "local")
        )
        if stop is not None and stop(run):
            stopped.append(run.run_id)
    problem: str | None = None
    if docker_down is not None:
        try:
            stopped += docker_down(None if all_runs else run_id, all_runs)
        except Exception as exc:  # Docker down or unreachable: local runs were still stopped
            problem = str(exc)
    return stopped, problem
