"""``harness watch -- COMMAND``: run any command under the hang watchdog."""

from __future__ import annotations

import os
from pathlib import Path

import click

from harness.cli.display import make_console
from harness.cli.options import core_options, runs_dir_option, signatures_option
from harness.rundir import runs_root
from harness.watchdog.capture import CaptureOptions
from harness.watchdog.command import parse_env_pairs, run_watched
from harness.watchdog.flightrec import helper_env


@click.command(
    "watch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option(
    "--stall-after",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds without an output line (or heartbeat touch) that count as a hang.",
)
@click.option(
    "--heartbeat",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file the job touches while it makes progress; its mtime counts as activity too.",
)
@click.option(
    "--on-hang",
    type=click.Choice(["keep", "stop"]),
    default="stop",
    show_default=True,
    help="After the capture: stop every process of the job, or keep it for a human to attach.",
)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra environment for the command (repeatable), e.g. --env NCCL_DEBUG=INFO.",
)
@click.option(
    "--flight-recorder",
    is_flag=True,
    help="Turn on PyTorch's flight recorder (NCCL and CPU/Gloo), dumped into the bundle when a "
    "hang is captured; the summary lists each rank's last collective and the missing ranks.",
)
@click.option(
    "--capture-gap",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between the two stack dumps of every process.",
)
@core_options
@signatures_option
@click.option("--quiet", is_flag=True, help="Do not echo the command's output (still logged).")
@runs_dir_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def watch(
    stall_after: float,
    heartbeat: Path | None,
    on_hang: str,
    env_pairs: tuple[str, ...],
    flight_recorder: bool,
    capture_gap: float,
    core: bool,
    core_timeout: float,
    quiet: bool,
    runs_dir: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND under the watchdog; capture every process when it hangs.

    No output line (and no touch of --heartbeat FILE) for --stall-after seconds is a hang:
    py-spy stacks (twice), states and logs of the whole process tree go to
    runs/<run-id>/incidents/<n>/, and with --on-hang stop (default) no process of the job is
    left running. The command's output is echoed and kept in runs/<run-id>/server.log.

    Exit code: 1 when a hang was found, else the command's own exit code.

    \b
    Examples:
      harness watch --stall-after 120 -- torchrun --nproc-per-node 8 train.py
      harness watch --heartbeat /tmp/hb --env NCCL_DEBUG=INFO -- python train.py
      harness watch --core -- python native_job.py   # also gcore the odd process out
      harness watch --flight-recorder -- torchrun --nproc-per-node 2 train.py
    """
    console = make_console()
    env = parse_env_pairs(env_pairs)
    if flight_recorder:
        # The CPU recorder's dump helper goes first on the job's PYTHONPATH (yours after it).
        own = env.pop("PYTHONPATH", os.environ.get("PYTHONPATH"))
        env = {**helper_env(own), **env}
    result = run_watched(
        list(command),
        runs_root=runs_root(runs_dir),
        stall_after_s=stall_after,
        heartbeat=heartbeat,
        on_hang="keep" if on_hang == "keep" else "stop",
        env=env,
        flight_recorder=flight_recorder,
        console=console,
        echo=not quiet,
        capture_options=CaptureOptions(gap_s=capture_gap, cores=core, core_timeout_s=core_timeout),
    )
    if result.incident is not None:
        console.print(f"[red]hang found[/]: {result.incident.summary_path}")
    raise SystemExit(result.exit_code)
