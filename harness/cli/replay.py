"""``harness replay``: option parsing and printing; the campaign is
:mod:`harness.campaign.replay`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.cli.campaignopts import (
    live_progress,
    make_planner,
    startup_timeout_option,
    write_reports,
)
from harness.cli.display import make_console
from harness.cli.options import runs_dir_option, signatures_option
from harness.cli.planopts import plan_options, pop_plan_options
from harness.errors import BadInput, HangDetected
from harness.rundir import RunDir, new_run_id, open_run, runs_root
from harness.runtime.local import check_port_free

if TYPE_CHECKING:
    from harness.spec import LaunchSpec


@click.command("replay")
@click.argument("incident_dir", type=click.Path(path_type=Path))
@click.option("--url", default=None, help="Replay against this running server (no watchdog).")
@click.option(
    "--run",
    "run_id",
    default=None,
    help="Replay against the live server of this run (its own watchdog files incidents there).",
)
@plan_options
@click.option(
    "--times",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Attempts: the requests are sent again this many times.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many replayed requests in flight (default: as recorded).",
)
@click.option(
    "--stall-after",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds without a token that count as the hang (default: the plan's, 60 with --url).",
)
@startup_timeout_option
@signatures_option
@runs_dir_option
def replay(
    incident_dir: Path,
    url: str | None,
    run_id: str | None,
    times: int,
    concurrency: int | None,
    stall_after: float | None,
    startup_timeout: float | None,
    runs_dir: str | None,
    **kwargs: Any,
) -> None:
    """Send again the requests that were in flight when INCIDENT_DIR's hang fired, TIMES times.

    The requests come from the incident's inflight.jsonl (exact bodies, images included) and
    keep their relative send times. By default every attempt runs on a fresh server started
    from the incident's own launch_spec.json (or from the plan options, with --model), under
    the watchdog: the first hang is captured as an incident, that server is stopped and the
    next attempt gets a new one. --run RUN_ID sends to a server harness is serving (its
    watchdog files the incidents); --url URL to any server (a stalled request is the hang).

    The result is how often the hang came back, with its 95% Wilson interval, and the new
    incidents, in runs/<id>/summary.json, report.html and report.md.

    Exit code 1 when the hang came back at least once, 0 when it never did, 2 for bad input
    (an incident without inflight.jsonl), 130 when interrupted.

    \b
    Examples:
      harness replay runs/20261124-101502-vllm-tp2-3fa9/incidents/1 --times 10
      harness replay runs/.../incidents/1 --model ./tiny-model --tp 2 --profile debug
      harness replay runs/.../incidents/1 --run 20261124-101502-vllm-tp2-3fa9 --times 1
      harness replay runs/.../incidents/1 --url http://127.0.0.1:8000 --times 5
    """
    from harness.campaign.base import Progress, Slot, start_campaign
    from harness.campaign.replay import ReplayOptions, run_replay
    from harness.campaign.replaysource import (
        ServerPlanner,
        describe_items,
        incident_planner,
        read_source,
    )
    from harness.campaign.server import check_engine_installed

    plan_opts = pop_plan_options(kwargs)
    planned = plan_opts["model"] is not None
    if sum(x for x in (url is not None, run_id is not None, planned)) > 1:
        raise BadInput(
            "give at most one of --url, --run and plan options (--model ...)",
            hint="without any, the incident's own plan starts a fresh server",
        )
    source = read_source(incident_dir)
    console = make_console()
    root = runs_root(runs_dir)
    target_run = open_run(root, run_id) if run_id is not None else None
    run = RunDir(root / new_run_id("replay"))
    planner: ServerPlanner | None = None
    target = "url" if url else "run" if target_run else "fresh"
    if target == "fresh":
        if planned:
            make = make_planner(
                plan_opts, runs_dir=runs_dir, startup_timeout=startup_timeout,
                stall_after=stall_after,
            )  # fmt: skip

            def server(n: int) -> LaunchSpec:
                return make(Slot(run_id=f"{n:03d}", runs_root=run.path / "servers", index=n))

            planner = server

        elif source.spec is not None:
            planner = incident_planner(source.spec, run, stall_after)
        else:
            raise BadInput(
                f"{incident_dir}: no launch_spec.json to start a fresh server from",
                hint="give plan options (--model ...), --run RUN_ID or --url URL",
            )
        first = planner(1)  # the plan is checked before anything is created
        check_engine_installed(first)
        check_port_free(first.host, first.port)
    start_campaign(
        run,
        "replay",
        {
            "incident": str(source.path),
            "target": target,
            "url": url,
            "run": run_id,
            "times": times,
            "concurrency": concurrency,
            "stall_after_s": stall_after,
            "plan_options": {
                k: list(v) if isinstance(v, tuple) else v for k, v in plan_opts.items()
            }
            if planned
            else None,
        },
    )
    console.print(
        f"replay [bold]{run.run_id}[/] → {run.path}: {describe_items(source.items)} of "
        f"{source.path}, {times} time(s) against "
        + {"fresh": "a fresh server", "run": f"run {run_id}", "url": str(url)}[target]
    )
    progress = Progress("replay", total_steps=times)
    with live_progress(console, progress):
        summary = run_replay(
            run,
            source,
            ReplayOptions(times=times, concurrency=concurrency, stall_after_s=stall_after),
            planner=planner,
            target_run=target_run,
            url=url,
            console=console,
            progress=progress,
        )
    write_reports(run.path, console)
    r = summary["replay"]
    lo, hi = r["ci95"]
    rate = "-" if r["rate"] is None else f"{r['rate']:.2f}"
    ci = "" if lo is None else f" (95% CI {lo:.2f}-{hi:.2f})"
    console.print(
        f"the hang came back in [bold]{r['reproduced']}[/] of {r['attempts']} attempt(s): "
        f"rate {rate}{ci}; summary: {run.summary}"
    )
    for link in r["incidents"]:
        console.print(f"  incident: {run.path / link}", markup=False)
    if summary["campaign"]["status"] == "interrupted":
        raise SystemExit(130)
    if r["reproduced"]:
        raise HangDetected(
            f"the hang came back in {r['reproduced']} of {r['attempts']} attempts",
            hint=f"report: {run.path / 'report.html'}",
        )


# Plan options are optional here: without them the incident's own plan is used.
for _param in replay.params:
    if _param.name == "model":
        _param.required = False
