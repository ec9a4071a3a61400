"""``harness dump``: capture every process of a server, a pid, a container or several nodes."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from harness.cli.options import core_options, runs_dir_option
from harness.errors import BadInput
from harness.rundir import RunDir, new_run_id, open_run, runs_root
from harness.watchdog.capture import CaptureOptions, capture_incident
from harness.watchdog.redact import Redactor
from harness.watchdog.remote import DEFAULT_MATCH, capture_remote, remote_script, run_remote
from harness.watchdog.targets import Target, container_target, pid_target, run_target


@click.command("dump")
@click.argument("run_id", required=False)
@click.option("--pid", "pids", type=int, multiple=True, help="A process (and its children).")
@click.option("--container", default=None, help="A container's processes (name or id).")
@click.option("--hosts", default=None, help="Comma-separated nodes to dump over ssh (pdsh).")
@click.option("--slurm-job", default=None, help="Dump every node of a Slurm job via srun.")
@click.option(
    "--match",
    default=DEFAULT_MATCH,
    show_default=True,
    help="With --hosts/--slurm-job: processes whose command line matches this regex.",
)
@click.option(
    "--remote-py-spy",
    default="py-spy",
    show_default=True,
    help="py-spy on the remote nodes (path or name on their PATH).",
)
@click.option(
    "--gap",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between the two dumps of every process.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="Per-process py-spy deadline (seconds).",
)
@core_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bundle directory (default: runs/<run-id>/incidents/<n>/).",
)
@runs_dir_option
def dump(
    run_id: str | None,
    pids: tuple[int, ...],
    container: str | None,
    hosts: str | None,
    slurm_job: str | None,
    match: str,
    remote_py_spy: str,
    gap: float,
    timeout_s: float,
    core: bool,
    core_timeout: float,
    out: Path | None,
    runs_dir: str | None,
) -> None:
    """Capture stacks (py-spy --native, twice), states and logs now, into an incident bundle.

    \b
    Targets (one of):
      RUN_ID               a server harness started (harness ps)
      --pid PID            any process and its children (repeatable)
      --container NAME     every process of a container
      --hosts h1,h2        every matching process on those nodes, over ssh (pdsh if installed)
      --slurm-job ID       every node of a Slurm job (srun --overlap --gres=gpu:0)

    \b
    Examples:
      harness dump 20261124-101502-vllm-tp2-3fa9
      harness dump --pid 4242
      harness dump --pid 4242 --core          # also gcore the odd process out (and peers)
      harness dump --slurm-job 2180718 --remote-py-spy ~/venv/bin/py-spy
    """
    console = Console(stderr=True)
    chosen = [x for x in (run_id, pids or None, container, hosts, slurm_job) if x]
    if len(chosen) != 1:
        raise BadInput(
            "give exactly one of RUN_ID, --pid, --container, --hosts, --slurm-job",
            hint="harness dump --help",
        )
    root = runs_root(runs_dir)
    if core and (hosts or slurm_job):
        raise BadInput(
            "--core works for processes on this machine (RUN_ID, --pid, --container)",
            hint="on the node itself: harness dump --pid PID --core",
        )
    if hosts or slurm_job:
        host_list = [h.strip() for h in (hosts or "").split(",") if h.strip()]
        if hosts and not host_list:
            raise BadInput("--hosts needs at least one host name")
        run = RunDir(root / new_run_id("dump")).create()
        out_dir = out or run.next_incident_dir()
        script = remote_script(match=match, py_spy=remote_py_spy, gap_s=gap, timeout_s=timeout_s)
        started = time.time()
        with console.status(f"dumping {hosts or 'Slurm job ' + str(slurm_job)} ..."):
            nodes = run_remote(
                hosts=host_list,
                slurm_job=slurm_job,
                script=script,
                timeout_s=2 * timeout_s + gap + 60,
            )
        capture_remote(out_dir, nodes, redactor=Redactor.from_envs(), started_at=started)
        console.print((out_dir / "summary.md").read_text().splitlines()[1])
        click.echo(str(out_dir))
        return
    target: Target
    if run_id:
        run = open_run(root, run_id)
        target = run_target(run)
    else:
        target = pid_target(pids) if pids else container_target(str(container))
        run = RunDir(root / new_run_id("dump")).create()
    incident = capture_incident(
        run,
        out,
        pids=target.pids,
        kind="manual",
        rule="dump",
        detail=f"harness dump of {target.description}",
        spec=target.spec,
        container_exec=target.container_exec,
        options=CaptureOptions(
            gap_s=gap, timeout_s=timeout_s, cores=core, core_timeout_s=core_timeout
        ),
        console=console,
    )
    click.echo(str(incident.path))
