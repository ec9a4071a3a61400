"""``harness dump``: capture every process of a server, a pid, a container or several nodes."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click
from rich.console import Console

from harness.cli.display import make_console
from harness.cli.options import core_options, runs_dir_option, signatures_option
from harness.errors import BadInput, EnvironmentProblem
from harness.rundir import RunDir, new_run_id, open_run, runs_root
from harness.watchdog.capture import CaptureOptions, ContainerExec, capture_incident
from harness.watchdog.redact import Redactor
from harness.watchdog.remote import capture_remote, run_remote
from harness.watchdog.remotecmd import DEFAULT_MATCH, remote_script, rsh_command
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
    "--rsh",
    default=None,
    metavar="'CMD {host}'",
    help="With --hosts: reach each host with this command instead of ssh/pdsh; it runs "
    "`sh -c SCRIPT` (e.g. 'docker exec {host}', 'kubectl exec {host} --').",
)
@click.option(
    "--host-timeout",
    type=click.FloatRange(min=1),
    default=None,
    help="With --hosts/--slurm-job: deadline for each node's whole dump "
    "[default: 2 x --timeout + --gap + 60].",
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
@signatures_option
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
    rsh: str | None,
    host_timeout: float | None,
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
      --hosts h1,h2        every matching process on those nodes, over ssh (pdsh if installed,
                           or --rsh CMD)
      --slurm-job ID       every node of a Slurm job (srun --overlap --gres=gpu:0)

    \b
    Examples:
      harness dump 20261124-101502-vllm-tp2-3fa9
      harness dump --pid 4242
      harness dump --pid 4242 --core          # also gcore the odd process out (and peers)
      harness dump --slurm-job 2180718 --remote-py-spy ~/venv/bin/py-spy
      harness dump --hosts node5,node8 --match 'VLLM::'

    A node that does not answer is named with the reason (exit 3 when none answered); one
    that stops answering keeps what it printed before --host-timeout.
    """
    console = make_console()
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
    if rsh and not hosts:
        raise BadInput("--rsh works with --hosts", hint="harness dump --hosts c1,c2 --rsh ...")
    if hosts or slurm_job:
        _dump_nodes(
            console,
            root,
            out,
            hosts=hosts,
            slurm_job=slurm_job,
            rsh=shlex.split(rsh) if rsh else None,
            script=remote_script(match=match, py_spy=remote_py_spy, gap_s=gap, timeout_s=timeout_s),
            deadline_s=host_timeout or 2 * timeout_s + gap + 60,
        )
        return
    target: Target
    if run_id:
        run = open_run(root, run_id)
        target = run_target(run, _container_access)
    else:
        target = pid_target(pids) if pids else container_target(str(container), _container_access)
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


def _dump_nodes(
    console: Console,
    root: Path,
    out: Path | None,
    *,
    hosts: str | None,
    slurm_job: str | None,
    rsh: list[str] | None,
    script: str,
    deadline_s: float,
) -> None:
    """``--hosts`` / ``--slurm-job``: run the script on every node, merge what came back."""
    host_list = [h.strip() for h in (hosts or "").split(",") if h.strip()]
    if hosts and not host_list:
        raise BadInput("--hosts needs at least one host name")
    if rsh is not None:
        rsh_command(rsh, "h", "")  # a template without {host}: refused before anything runs
    started = time.time()
    with console.status(f"dumping {hosts or 'Slurm job ' + str(slurm_job)} ..."):
        nodes = run_remote(
            hosts=host_list, slurm_job=slurm_job, script=script, timeout_s=deadline_s, rsh=rsh
        )
    if not any(node.answered for node in nodes):
        failed = "; ".join(f"{n.host} ({n.error or 'no output'})" for n in nodes)
        raise EnvironmentProblem(
            f"no node answered: {failed}",
            hint="check that `ssh HOST true` works without a prompt (BatchMode), "
            "or reach the nodes with --rsh",
        )
    for node in nodes:
        if not node.complete:
            note = node.error or "incomplete output"
            console.print(f"warning: node {node.host}: {note}", markup=False, soft_wrap=True)
    run = RunDir(root / new_run_id("dump")).create()
    out_dir = out or run.next_incident_dir()
    capture_remote(out_dir, nodes, redactor=Redactor.from_envs(), started_at=started)
    console.print((out_dir / "summary.md").read_text().splitlines()[1], markup=False)
    click.echo(str(out_dir))


def _container_access(name: str) -> tuple[list[int], ContainerExec]:
    # Imported when a container is dumped: the Docker SDK costs start-up time otherwise.
    from harness.runtime.docker_runs import container_access

    return container_access(name)
