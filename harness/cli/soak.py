"""``harness soak``: option parsing and printing; the campaign is :mod:`harness.campaign.soak`."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from harness.campaign.base import Progress, Slot
from harness.cli.campaignopts import (
    check_plan,
    live_progress,
    load_options,
    load_plan_from,
    make_planner,
    stall_after_option,
    startup_timeout_option,
    write_reports,
)
from harness.cli.display import make_console
from harness.cli.load import Duration
from harness.cli.options import runs_dir_option, signatures_option
from harness.cli.planopts import plan_options, pop_plan_options
from harness.errors import BadInput, HangDetected
from harness.rundir import RunDir, new_run_id, open_run, runs_root


@click.command("soak")
@plan_options
@click.option("--duration", type=Duration(), help="How long to soak (90m, 8h, 2d).")
@load_options
@click.option(
    "--max-failed-starts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Give up after this many failed starts in a row.",
)
@startup_timeout_option
@stall_after_option
@click.option(
    "--resume",
    "resume_id",
    metavar="RUN_ID",
    help="Go on with a soak whose harness was killed (same plan, same load, numbering and "
    "elapsed time carried on).",
)
@signatures_option
@runs_dir_option
def soak(
    duration: float | None,
    max_failed_starts: int,
    startup_timeout: float | None,
    stall_after: float | None,
    resume_id: str | None,
    runs_dir: str | None,
    **kwargs: Any,
) -> None:
    """Serve, load and watch for hours or days; on a hang capture it, restart the server under
    the same plan, and go on.

    Everything is appended as it happens to runs/<id>/ (requests.jsonl, incidents/<n>/,
    server.log, soak.json); summary.json, report.html and report.md at the end give the hang
    rate per 1,000 requests and per hour with 95% intervals, and latency and throughput in
    time windows with the incidents marked. If harness itself is killed, `harness soak
    --resume RUN_ID` goes on: no finished request lost or counted twice.

    Exit code 1 when a hang or crash was found, 0 when none, 130 when interrupted.

    \b
    Examples:
      harness soak --model ./tiny-model --tp 2 --profile eager --duration 8h -w chat-short --rate 2
      harness soak --engine sim --model sim --fault stall:p=0.001 --duration 10m -c 8
      harness soak --resume 20261201-101500-soak-vllm-tp2-3fa9
    """
    from harness.campaign.base import start_campaign
    from harness.campaign.soak import (
        SoakOptions,
        prepare_resume,
        run_soak,
        start_soak_state,
    )

    console = make_console()
    root = runs_root(runs_dir)
    plan_opts = pop_plan_options(kwargs)
    if resume_id is not None:
        ctx = click.get_current_context()
        given = [
            f"--{name.replace('_', '-')}"
            for name in ctx.params
            if name not in ("resume_id", "runs_dir")
            and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
        ]
        if given:
            raise BadInput(
                "--resume goes on with the recorded plan, load and duration; "
                f"drop {', '.join(given)}"
            )
        run = open_run(root, resume_id)
        spec, plan, options = prepare_resume(run)
        console.print(f"resuming soak [bold]{run.run_id}[/] → {run.path}")
    else:
        if plan_opts["model"] is None:
            raise BadInput("give --model (or --resume RUN_ID)")
        if duration is None:
            raise BadInput("give --duration (e.g. 30m, 8h)")
        plan = load_plan_from(kwargs, stall_after=stall_after)
        run = RunDir(root / new_run_id(f"soak-{plan_opts['engine']}-tp{plan_opts['tp']}"))
        planner = make_planner(
            plan_opts, runs_dir=runs_dir, startup_timeout=startup_timeout, stall_after=stall_after
        )
        spec = check_plan(planner, Slot(run_id=run.run_id, runs_root=root))
        for warning in spec.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        from harness.campaign.serve import prepare_run

        options = SoakOptions(duration_s=duration, max_failed_starts=max_failed_starts)
        prepare_run(spec)
        start_campaign(
            run,
            "soak",
            {
                "engine": spec.engine,
                "model": spec.model,
                "tp": spec.tp,
                "profiles": spec.profiles,
                "runtime": spec.runtime,
                "duration_s": duration,
                "max_failed_starts": max_failed_starts,
                "load": plan.model_dump(),
            },
        )
        start_soak_state(run, options)
        console.print(
            f"soak [bold]{run.run_id}[/] → {run.path}: {spec.engine} tp={spec.tp} for "
            f"{duration:g} s, workload {plan.workload}"
        )
    progress = Progress("soak")
    with live_progress(console, progress):
        summary = run_soak(run, spec, plan, options, console=console, progress=progress)
    write_reports(run.path, console)
    s = summary["soak"]
    per_k = s["hangs_per_1000_requests"] or {"value": None}
    per_h = s["hangs_per_hour"]
    console.print(
        f"{summary['requests']['finished']} requests, [bold]{s['incidents']}[/] incident(s), "
        f"{s['restarts']} restart(s) in {s['elapsed_s']:.0f} s; hangs per 1,000 requests "
        f"{_fmt(per_k['value'])}, per hour {_fmt(per_h['value'])}; summary: {run.summary}"
    )
    if s["status"] == "interrupted":
        console.print(f"resume with: harness soak --resume {run.run_id}")
        raise SystemExit(130)
    if s["incidents"] or s["status"] == "failed":
        raise HangDetected(
            f"{s['incidents']} incident(s) during the soak"
            + (" (it gave up after failed starts)" if s["status"] == "failed" else ""),
            hint=f"incidents: {run.incidents}; report: {run.path / 'report.html'}",
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


# --resume needs no plan: the model is optional here (checked in the command).
for _param in soak.params:
    if _param.name == "model":
        _param.required = False
