"""``harness doctor``: pre-flight checks where the server will run (printing only; the checks
are :mod:`harness.doctor`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from harness.cli.options import runs_dir_option
from harness.cli.planopts import build_spec, plan_options, pop_plan_options
from harness.doctor.checks import Check
from harness.spec import LaunchSpec

_COLORS = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "SKIP": "blue"}


def format_check(check: Check, *, color: bool = True) -> str:
    """One line: status, name, what was found and, when it is not PASS, the fix."""
    status = (
        click.style(f"{check.status:<4}", fg=_COLORS[check.status], bold=True)
        if color
        else (f"{check.status:<4}")
    )
    fix = f" -> fix: {check.fix}" if check.fix and check.status != "PASS" else ""
    return f"{status} {check.name}: {check.detail}{fix}"


def echo_check(check: Check) -> None:
    click.echo(format_check(check))


def preflight_hook(spec: LaunchSpec) -> None:
    """``serve --preflight``: doctor's fast checks, printed; raises on a FAIL (nothing starts)."""
    from harness.doctor.run import preflight

    preflight(spec, echo_check)


@click.command()
@plan_options
@click.option("--json", "as_json", is_flag=True, help='Print {"checks": [...]} only.')
@click.option(
    "--no-distributed",
    is_flag=True,
    help="Skip the distributed sanity test (the fast checks only, as serve --preflight).",
)
@click.option(
    "--dist-timeout",
    type=click.FloatRange(min=1, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds each step of the distributed test may take before the waiting rank gives up.",
)
@runs_dir_option
def doctor(
    as_json: bool,
    no_distributed: bool,
    dist_timeout: float,
    runs_dir: str | None,
    **kwargs: Any,
) -> None:
    """Check, where the server will run, what the field guides check before blaming the engine.

    One line per check: PASS, WARN, FAIL or SKIP, with the fix when it is not PASS. Checks:
    the distributed sanity test with one process per TP rank (Gloo all_reduce + barrier; NCCL,
    vLLM's pynccl and its CUDA-graph variant on GPUs), GPUs / driver / CUDA and peer access,
    /dev/shm and IPC against TP, ptrace for stack dumps, core dumps, the network the
    collectives use, the model's filesystem and size against free memory, a pre-sharded copy,
    debug variables left exported, engine and Docker versions. With --runtime docker they run
    in containers made from the same plan (image, IPC, shm, capabilities, network).

    Results go to runs/<run-id>/doctor.json (rank logs and probes in runs/<run-id>/doctor/).
    Exit code 1 when a check FAILs, 0 otherwise.

    \b
    Examples:
      harness doctor --model ./tiny-model --tp 2
      harness doctor --model ./tiny-model --tp 2 --runtime docker --profile debug --json
    """
    from harness.doctor.run import DOCTOR_FILE, run_doctor, save
    from harness.errors import CheckFailed
    from harness.rundir import RunDir, new_run_id

    options = pop_plan_options(kwargs)
    run_id = new_run_id(f"doctor-{options['engine']}-tp{options['tp']}")
    spec = build_spec(options, runs_dir=runs_dir, run_id=run_id, for_start=False)
    if not as_json:
        for warning in spec.warnings:
            click.echo(f"warning: {warning}", err=True)
    run = RunDir(Path(spec.run_dir)).create()
    run.write_launch_spec(spec)
    result = run_doctor(
        spec,
        run.path / "doctor",
        distributed=not no_distributed,
        dist_timeout_s=dist_timeout,
        on_check=None if as_json else echo_check,
    )
    save(result, run.path / DOCTOR_FILE)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"results: {run.path / DOCTOR_FILE}", err=True)
    if result.failed:
        names = ", ".join(c.name for c in result.failed)
        raise CheckFailed(f"{len(result.failed)} check(s) failed: {names}")
