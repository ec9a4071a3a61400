"""``harness serve``, ``harness ps``, ``harness down``: option parsing and printing only; the
lifecycle is :mod:`harness.campaign.serve`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from harness.cli.display import StartupDisplay, make_console
from harness.cli.options import runs_dir_option, signatures_option
from harness.cli.planopts import build_spec, plan_options, pop_plan_options
from harness.rundir import runs_root

if TYPE_CHECKING:
    from harness.spec import LaunchSpec


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
@click.option("--preflight", is_flag=True, help="Refuse to start if a doctor check FAILs.")
@click.option(
    "--on-hang",
    type=click.Choice(["keep", "stop", "restart"]),
    default=None,
    help="After a hang (or a missed startup deadline): keep the server for a human to attach "
    "(default), stop it, or restart it.",
)
@signatures_option
@runs_dir_option
def serve(
    detach: bool,
    startup_timeout: float | None,
    stall_after: float | None,
    no_watch: bool,
    preflight: bool,
    on_hang: str | None,
    runs_dir: str | None,
    **kwargs: Any,
) -> None:
    """Start a server, wait until it is healthy (showing startup phases), then watch it.

    Output goes to runs/<run-id>/server.log. Ctrl-C (or SIGTERM, SIGHUP) stops the whole
    process group (or the container). With --detach the server keeps running after harness
    returns, still watched by a background watcher (watchdog.log in the run directory);
    `harness down RUN_ID` stops both.

    Exit code 1 if the server never became healthy, crashed, or hung (also when the watchdog
    recorded a hang and harness was then stopped).

    \b
    Examples:
      harness serve --model ./tiny-model --profile default,eager
      harness serve --model ./tiny-model --tp 2 --profile debug --stall-after 20
    """
    from harness.campaign.serve import prepare_run
    from harness.campaign.serve import serve as serve_run

    console = make_console()
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
    hook: Callable[[LaunchSpec], None] | None = None
    if preflight:  # imported only when asked: nothing extra before the engine starts
        from harness.cli.doctor import preflight_hook

        hook = preflight_hook
    run = prepare_run(spec, preflight=hook)
    console.print(f"run [bold]{spec.run_id}[/] → {run.path}")
    serve_run(spec, run, console, detach=detach, observer=StartupDisplay(console, spec))


@click.command()
@runs_dir_option
def ps(runs_dir: str | None) -> None:
    """List live servers started by harness (local process groups and labelled containers)."""
    from rich.table import Table

    from harness.campaign.serve import live_servers

    console = make_console(stderr=False)
    rows = live_servers(runs_root(runs_dir), _docker_rows)
    if not rows:
        console.print("no live servers")
        return
    table = Table("run id", "runtime", "engine", "tp", "status", "where")
    # The run id is what a user copies: never cut it, let the other columns wrap instead.
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max(len(row.run_id) for row in rows)
    for row in rows:
        table.add_row(row.run_id, row.runtime, row.engine, row.tp, row.status, row.where)
    console.print(table)


def _docker_rows() -> list[dict[str, Any]]:
    try:
        from harness.runtime.docker_runs import docker_ps
    except ImportError:
        return []
    try:
        return docker_ps()
    except Exception:  # no Docker here: only local servers are listed
        return []


def _docker_down(run_id: str | None, all_runs: bool) -> list[str]:
    try:
        from harness.runtime.docker_runs import docker_down
    except ImportError:
        return []
    return docker_down(run_id, all_runs=all_runs)


@click.command()
@click.argument("run_id", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Stop every live server started by harness.")
@runs_dir_option
def down(run_id: str | None, all_runs: bool, runs_dir: str | None) -> None:
    """Stop a server (RUN_ID) or all of them (--all), with their background watchers,
    including orphaned containers."""
    from harness.campaign.serve import down as stop_runs

    if not run_id and not all_runs:
        raise click.UsageError("give a RUN_ID or --all")
    stopped, docker_problem = stop_runs(
        runs_root(runs_dir), run_id, all_runs=all_runs, docker_down=_docker_down
    )
    for name in stopped:
        click.echo(f"stopped {name}")
    if not stopped:
        click.echo("nothing to stop")
    if docker_problem and all_runs:
        click.echo(f"note: containers not checked: {docker_problem}", err=True)
