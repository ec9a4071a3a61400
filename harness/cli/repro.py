"""``harness repro-startup``: option parsing and printing; the campaign is
:mod:`harness.campaign.repro`."""

from __future__ import annotations

from typing import Any

import click

from harness.campaign.base import Progress, Slot
from harness.cli.campaignopts import (
    check_plan,
    live_progress,
    make_planner,
    planner_record,
    refuse_secret_flags_for_slurm,
    slurm_options,
    startup_timeout_option,
    write_reports,
)
from harness.cli.display import make_console
from harness.cli.options import runs_dir_option, signatures_option
from harness.cli.planopts import plan_options, pop_plan_options
from harness.errors import BadInput, HangDetected
from harness.rundir import RunDir, new_run_id, runs_root


@click.command("repro-startup")
@plan_options
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    required=True,
    help="Number of cold starts, one after the other.",
)
@click.option("--until-hang", is_flag=True, help="Stop at the first start that hangs.")
@startup_timeout_option
@click.option(
    "--seed",
    type=int,
    default=None,
    help="--engine sim only: start n uses fault seed SEED+n (reproducible fault decisions).",
)
@slurm_options
@signatures_option
@runs_dir_option
def repro_startup(
    runs: int,
    until_hang: bool,
    startup_timeout: float | None,
    seed: int | None,
    slurm: bool,
    partition: str | None,
    slurm_time: str | None,
    runs_dir: str | None,
    **kwargs: Any,
) -> None:
    """Start the server RUNS times in a row to measure how often a start never becomes healthy.

    Every start that misses the startup deadline (a hang) or exits (a crash) is captured as an
    incident before its server is stopped, and the campaign goes on. The result is the hang
    rate with its 95% Wilson interval, the time to healthy and to every startup phase, in
    runs/<id>/summary.json, report.html and report.md. Each start is a run directory under
    runs/<id>/starts/<n>/.

    With --slurm every start is a task of one SLURM job array (start n serves on port P+n-1,
    as tasks may share a node); harness follows the job and gathers the starts into the same
    summary and report; a task SLURM killed is recorded with SLURM's state.

    Exit code 1 when any start hung or crashed, 0 when all became healthy, 130 when
    interrupted (the report covers the starts that finished).

    \b
    Examples:
      harness repro-startup --model ./tiny-model --tp 2 --profile eager --runs 20
      harness repro-startup --engine sim --model sim --fault startup-hang:p=0.2 \\
          --runs 30 --startup-timeout 5
      harness repro-startup --model ./tiny-model --tp 2 --runs 50 --until-hang
    """
    from harness.campaign.base import start_campaign
    from harness.campaign.repro import ReproOptions, run_repro, run_repro_slurm
    from harness.campaign.server import check_engine_installed
    from harness.campaign.slurm import SlurmOptions, require_slurm

    console = make_console()
    plan_opts = pop_plan_options(kwargs)
    run = RunDir(
        runs_root(runs_dir) / new_run_id(f"repro-{plan_opts['engine']}-tp{plan_opts['tp']}")
    )
    planner = make_planner(plan_opts, runs_dir=runs_dir, startup_timeout=startup_timeout, seed=seed)
    first = check_plan(planner, Slot(run_id="001", runs_root=run.path / "starts", index=1))
    for warning in first.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if slurm:
        if until_hang:
            raise BadInput("--until-hang runs starts one after the other; it cannot use --slurm")
        require_slurm()
        refuse_secret_flags_for_slurm(plan_opts)
    else:
        check_engine_installed(first)
    start_campaign(
        run,
        "repro-startup",
        {
            "engine": first.engine,
            "model": first.model,
            "tp": first.tp,
            "profiles": first.profiles,
            "runtime": first.runtime,
            "runs": runs,
            "until_hang": until_hang,
            "startup_timeout_s": first.deadlines.startup_s,
            "seed": seed,
            **planner_record(plan_opts, startup_timeout=startup_timeout, seed=seed),
        },
    )
    console.print(
        f"repro-startup [bold]{run.run_id}[/] → {run.path}: {runs} starts of {first.engine} "
        f"tp={first.tp}, deadline {first.deadlines.startup_s:g} s each"
    )
    progress = Progress("repro-startup", total_steps=runs)
    options = ReproOptions(runs=runs, until_hang=until_hang)
    with live_progress(console, progress):
        if slurm:
            summary = run_repro_slurm(
                run,
                options,
                SlurmOptions(partition=partition, time_limit=slurm_time),
                console=console,
                progress=progress,
            )
        else:
            summary = run_repro(run, planner, options, console=console, progress=progress)
    write_reports(run.path, console)
    s = summary["startup"]
    lo, hi = s["ci95"]
    rate = "-" if s["rate"] is None else f"{s['rate']:.3f}"
    ci = "" if lo is None else f" (95% CI {lo:.3f}-{hi:.3f})"
    ready = s["ready_s"]
    console.print(
        f"[bold]{s['hangs']}[/] hang(s) and {s['crashes']} crash(es) in {s['runs']} starts: "
        f"hang rate {rate}{ci}; ready p50 "
        + ("-" if ready["p50"] is None else f"{ready['p50']:.1f} s")
        + f"; summary: {run.summary}"
    )
    if summary["campaign"]["status"] == "interrupted":
        raise SystemExit(130)
    if s["hangs"] or s["crashes"]:
        raise HangDetected(
            f"{s['hangs']} of {s['runs']} starts hung, {s['crashes']} crashed",
            hint=f"incidents: {run.path}/starts/<n>/incidents/; report: {run.path / 'report.html'}",
        )
