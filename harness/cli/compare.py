"""``harness compare``: option parsing and printing; the campaign is
:mod:`harness.campaign.compare`."""

from __future__ import annotations

from typing import Any

import click

from harness.campaign.base import Progress, Slot
from harness.cli.campaignopts import (
    check_plan,
    live_progress,
    load_options,
    load_plan_from,
    make_planner,
    planner_record,
    refuse_secret_flags_for_slurm,
    slurm_options,
    stall_after_option,
    startup_timeout_option,
    write_reports,
)
from harness.cli.display import make_console
from harness.cli.load import Duration
from harness.cli.options import runs_dir_option, signatures_option
from harness.cli.planopts import plan_options, pop_plan_options
from harness.errors import BadInput, HangDetected
from harness.profiles import split_profile_list
from harness.rundir import RunDir, new_run_id, runs_root

DEFAULT_CONCURRENCY = 8


def parse_tp_list(text: str) -> list[int]:
    """``1,2,4`` -> [1, 2, 4]; anything else is bad input naming the problem."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise BadInput(f"--tp {text!r}: {part!r} is not a TP size (whole numbers >= 1)")
        values.append(int(part))
    if not values:
        raise BadInput(f"--tp {text!r} names no TP size (e.g. --tp 1,2)")
    return list(dict.fromkeys(values))


@click.command("compare")
@plan_options
@load_options
@click.option(
    "--repeats",
    type=int,
    default=1,
    show_default=True,
    help="Servers started per cell (interleaved across cells); 2+ lets throughput be tested.",
)
@click.option("--requests", "-n", "n_requests", type=int, help="Requests per cell and repeat.")
@click.option("--duration", type=Duration(), help="Load time per cell and repeat (90s, 5m).")
@click.option(
    "--max-rate-under-slo",
    "slo_text",
    metavar="CRITERIA",
    help="Also find each cell's highest sustained request rate within the SLO, e.g. "
    "ttft=500ms,tpot=50ms (p99 unless METRIC@p90=...).",
)
@click.option(
    "--slo-probes",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="Most load runs the SLO search spends per cell.",
)
@click.option(
    "--slo-probe-seconds",
    type=click.FloatRange(min=1),
    default=20.0,
    show_default=True,
    help="About how long each SLO probe sends (20 to 200 requests).",
)
@startup_timeout_option
@stall_after_option
@slurm_options
@signatures_option
@runs_dir_option
def compare(
    repeats: int,
    n_requests: int | None,
    duration: float | None,
    slo_text: str | None,
    slo_probes: int,
    slo_probe_seconds: float,
    startup_timeout: float | None,
    stall_after: float | None,
    slurm: bool,
    partition: str | None,
    slurm_time: str | None,
    runs_dir: str | None,
    **kwargs: Any,
) -> None:
    """Compare TP sizes, profiles and engines with the same seeded workload, with tests that
    say which differences are real.

    The matrix is every --engine x every --tp x every --profile (each --profile value is one
    cell's profile list, e.g. --profile default --profile nccl-safe). Every cell starts its own
    server, gets identical requests on an identical schedule, and is stopped. Per cell:
    throughput, TTFT/ITL/TPOT/E2E percentiles, goodput, error, stall and hang rates with
    intervals, startup time; every cell against the first: Mann-Whitney U on per-request
    latencies, Welch's t on per-repeat throughput (--repeats 2+), Fisher's exact test on
    counts, false-discovery adjusted, marked significant or noise with the effect size.

    With --slurm every cell-repeat is a task of one SLURM job array (task n serves on port
    P+n-1), gathered into the same summary and report.

    Exit code 1 when a cell hung or crashed, 0 otherwise, 130 when interrupted.

    \b
    Examples:
      harness compare --model ./tiny-model --tp 1,2 --profile eager -w chat-short --requests 100
      harness compare --model M --tp 2 --profile default --profile nccl-safe --repeats 3 \\
          --duration 5m --rate 4
      harness compare --engine sim --model sim --tp 1,2 --requests 200 -c 16 \\
          --max-rate-under-slo ttft=200ms,tpot=50ms
    """
    from harness.campaign.base import start_campaign
    from harness.campaign.compare import (
        CompareOptions,
        matrix,
        run_compare,
        run_compare_slurm,
    )
    from harness.campaign.server import check_engine_installed
    from harness.campaign.slurm import SlurmOptions, require_slurm
    from harness.report.slo import parse_slo

    console = make_console()
    plan_opts = pop_plan_options(kwargs)
    engines = list(dict.fromkeys(plan_opts.pop("engine")))
    tps = parse_tp_list(plan_opts.pop("tp"))
    profile_sets = [tuple(split_profile_list((p,))) for p in plan_opts.pop("profiles")] or [()]
    if repeats < 1:
        raise BadInput(f"--repeats must be at least 1 (got {repeats})")
    if n_requests is None and duration is None:
        raise BadInput("give --requests N or --duration D (per cell and repeat)")
    if kwargs["rate"] is None and kwargs["concurrency"] is None:
        kwargs["concurrency"] = DEFAULT_CONCURRENCY
    criteria = parse_slo(slo_text) if slo_text else ()
    plan = load_plan_from(kwargs, stall_after=stall_after, requests=n_requests, duration_s=duration)
    cells = matrix(engines, tps, profile_sets)
    plan_opts.update(engine=engines[0], tp=tps[0], profiles=profile_sets[0])
    run = RunDir(runs_root(runs_dir) / new_run_id("compare"))
    planner = make_planner(
        plan_opts, runs_dir=runs_dir, startup_timeout=startup_timeout, stall_after=stall_after
    )
    # Every cell is planned now: an unknown profile or an impossible TP fails before any start.
    for cell in cells:
        spec = check_plan(
            planner,
            Slot("r1", run.path / "cells" / cell.key, 1, cell.engine, cell.tp, cell.profiles),
        )
        if not slurm:
            check_engine_installed(spec)
    if slurm:
        require_slurm()
        refuse_secret_flags_for_slurm(plan_opts)
    start_campaign(
        run,
        "compare",
        {
            "cells": [{**c.to_dict(), "label": c.label, "key": c.key} for c in cells],
            "model": spec.model,
            "runtime": spec.runtime,
            "repeats": repeats,
            "load": plan.model_dump(),
            "slo": [str(c) for c in criteria],
            "slo_text": [slo_text] if slo_text else [],
            "slo_probes": slo_probes,
            "slo_probe_seconds": slo_probe_seconds,
            **planner_record(plan_opts, startup_timeout=startup_timeout, stall_after=stall_after),
        },
    )
    mode = f"rate {plan.rate}/s" if plan.rate else f"concurrency {plan.concurrency}"
    console.print(
        f"compare [bold]{run.run_id}[/] → {run.path}: {len(cells)} cell(s) "
        f"({', '.join(c.label for c in cells)}) x {repeats} repeat(s), workload {plan.workload}, "
        f"{mode}, " + (f"{n_requests} requests" if n_requests else f"{duration:g} s") + " each"
    )
    progress = Progress("compare", total_steps=len(cells) * repeats)
    options = CompareOptions(
        repeats=repeats, slo=criteria, slo_max_probes=slo_probes, slo_probe_s=slo_probe_seconds
    )
    with live_progress(console, progress):
        if slurm:
            summary = run_compare_slurm(
                run,
                cells,
                options,
                SlurmOptions(partition=partition, time_limit=slurm_time),
                console=console,
                progress=progress,
            )
        else:
            summary = run_compare(
                run, cells, planner, plan, options, console=console, progress=progress
            )
    write_reports(run.path, console)
    _print_verdicts(console, summary, run.summary)
    if summary["campaign"]["status"] == "interrupted":
        raise SystemExit(130)
    hung = [c["label"] for c in summary["compare"]["cells"] if c["hangs"]]
    if hung:
        raise HangDetected(
            f"hang or crash in: {', '.join(hung)}", hint=f"report: {run.path / 'report.html'}"
        )


def _print_verdicts(console: Any, summary: dict[str, Any], summary_path: Any) -> None:
    """One line per significant difference (the report has the full table)."""
    for comparison in summary["compare"]["comparisons"]:
        significant = [d for d in comparison["differences"] if d["verdict"] == "significant"]
        if not significant:
            console.print(f"{comparison['label']}: no significant difference")
            continue
        parts = []
        for d in significant:
            size = f" {d['magnitude']}" if d.get("magnitude") else ""
            if d["effect_kind"] == "ratio" and d["effect"] is not None:
                parts.append(f"{d['metric']} x{d['effect']:.2f}{size}")
            elif d["effect"] is not None:
                parts.append(f"{d['metric']} {d['effect']:+.3f}")
        console.print(f"{comparison['label']}: " + ", ".join(parts) + " (significant)")
    console.print(f"summary: {summary_path}")


# compare's own matrix options replace plan_options' single engine, TP and profile list.
def _replace(command: click.Command, option: click.Option) -> None:
    command.params = [option if p.name == option.name else p for p in command.params]


_replace(
    compare,
    click.Option(
        ["--engine"],
        type=click.Choice(["vllm", "lmdeploy", "sim"]),
        multiple=True,
        default=("vllm",),
        show_default=True,
        help="Engine(s) to compare (repeatable).",
    ),
)
_replace(
    compare,
    click.Option(
        ["--tp"], default="1", show_default=True, help="TP sizes to compare, e.g. 1,2 or 1,2,4."
    ),
)
_replace(
    compare,
    click.Option(
        ["--profile", "profiles"],
        multiple=True,
        help="One cell's profiles (repeat for more cells): --profile default --profile "
        "nccl-safe,debug. [default: default]",
    ),
)
