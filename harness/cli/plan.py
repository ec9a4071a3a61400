"""``harness plan``: print the LaunchSpec; start nothing."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import click

from harness.cli.options import runs_dir_option
from harness.cli.planopts import build_spec, plan_options, pop_plan_options
from harness.errors import PlanError
from harness.nodeplan import check_layout
from harness.rundir import runs_root
from harness.spec import LaunchSpec


def _shell_lines(argv: list[str], env: dict[str, str]) -> list[str]:
    lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    return [*lines, "exec " + shlex.join(argv)]


def render_shell(spec: LaunchSpec) -> str:
    """A POSIX shell script that launches the plan's argv with its environment (local runtime).
    A multi-node plan's script takes the node's rank: ``sh plan.sh 0`` on the head, ``sh plan.sh
    1`` on the next node, ..."""
    lines = [
        "#!/bin/sh",
        f"# harness plan {spec.run_id}: {spec.engine} tp={spec.tp} "
        f"profiles={','.join(spec.profiles)} runtime={spec.runtime}",
    ]
    lines += [f"# warning: {w}" for w in spec.warnings]
    if spec.run_dir:
        lines.append(f"mkdir -p {shlex.quote(spec.run_dir)}")
    if not spec.nodes:
        lines += _shell_lines(spec.argv, spec.env)
        return "\n".join(lines) + "\n"
    usage = ", ".join(f"{n.rank} on {n.host}" for n in spec.nodes)
    lines.append(f'case "${{1:?give the node rank: {usage}}}" in')
    for node in spec.nodes:
        lines.append(f"  {node.rank})  # {node.host} ({node.role}, {node.address})")
        lines += [f"    {line}" for line in _shell_lines(node.argv, node.env)]
        lines.append("    ;;")
    lines += [f'  *) echo "no node rank $1 (valid: {usage})" >&2; exit 2 ;;', "esac"]
    return "\n".join(lines) + "\n"


def _serve_argv(ctx: click.Context, runs_dir: str | None, model: str) -> list[str]:
    """``harness serve`` with the options given to this ``harness plan`` (what a batch job
    runs), the model as the plan resolved it (a local directory made absolute); ``--node-hosts``
    is left out (the job's allocation names the nodes)."""
    argv = [sys.executable, "-m", "harness", "--runs-dir", str(runs_root(runs_dir)), "serve"]
    skip = {"fmt", "runs_dir", "node_hosts"}
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in skip or param.name is None:
            continue
        value = model if param.name == "model" else ctx.params.get(param.name)
        if value is None or value is False or value == param.default or value == ():
            continue
        flag = param.opts[0]
        if param.is_flag:
            argv.append(flag)
        elif param.multiple:
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


@click.command()
@plan_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "shell", "docker", "compose", "sbatch"]),
    default="json",
    show_default=True,
    help="json: the LaunchSpec; shell: a launch script; docker: a `docker run` line; "
    "compose: a Docker Compose file (docker and compose need --runtime docker); sbatch: a "
    "SLURM batch script running `harness serve` for this plan (with --nodes, on that many "
    "nodes of the allocation).",
)
@runs_dir_option
@click.pass_context
def plan(ctx: click.Context, /, fmt: str, runs_dir: str | None, **kwargs: Any) -> None:
    """Print the launch plan (argv, environment, container, deadlines); start nothing.

    With --nodes N --node-hosts h1,h2 the plan has one entry per node (``nodes``): each node's
    argv and environment (its own VLLM_HOST_IP and socket interfaces), from facts harness reads
    on each node over ssh.

    \b
    Examples:
      harness plan --engine vllm --model ./tiny-model --tp 2 --profile debug --runtime docker
      harness plan --model /shared/m --tp 2 --nodes 2 --node-hosts n1,n2 --format shell
      harness plan --model /shared/m --tp 8 --nodes 2 --format sbatch > serve.sbatch
    """
    options = pop_plan_options(kwargs)
    if fmt in {"docker", "compose"} and options["runtime"] != "docker":
        options["runtime"] = "docker"
    if fmt == "sbatch":
        _print_sbatch(ctx, options, runs_dir)
        return
    spec = build_spec(options, runs_dir=runs_dir, for_start=False)
    for warning in spec.warnings:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "json":
        click.echo(spec.to_json())
    elif fmt == "shell":
        click.echo(render_shell(spec), nl=False)
    else:
        from harness import render

        if spec.container is None:
            raise PlanError("--format docker/compose needs --runtime docker")
        text = render.render_docker_run(spec) if fmt == "docker" else render.render_compose(spec)
        missing = [name for name in render.secret_variables(spec) if not os.environ.get(name)]
        if missing:
            click.echo(
                f"warning: {', '.join(missing)} is not set in this shell: the container would "
                "start without it; export it before running the command",
                err=True,
            )
        click.echo(text, nl=not text.endswith("\n"))


def _print_sbatch(ctx: click.Context, options: dict[str, Any], runs_dir: str | None) -> None:
    """The batch script: the plan is checked here as for one node of the allocation (the nodes
    are the job's: their facts are read when the job runs)."""
    from harness import render

    nodes = int(options["nodes"] or 1)
    if options["node_hosts"]:
        raise PlanError(
            "--format sbatch takes the nodes from the job's allocation; drop --node-hosts",
            hint=f"--nodes {nodes} asks SLURM for that many nodes",
        )
    check_layout(options["tp"], nodes, [f"node{i}" for i in range(nodes)] if nodes > 1 else [])
    spec = build_spec({**options, "nodes": 1}, runs_dir=runs_dir, for_start=False)
    for warning in spec.warnings:
        click.echo(f"warning: {warning}", err=True)
    text = render.render_sbatch(
        spec,
        _serve_argv(ctx, runs_dir, spec.model),
        nodes=nodes,
        output_dir=str(runs_root(runs_dir)),
    )
    click.echo(text, nl=False)
