"""``harness plan``: print the LaunchSpec; start nothing."""

from __future__ import annotations

import os
import shlex
from typing import Any

import click

from harness.cli.options import runs_dir_option
from harness.cli.planopts import build_spec, plan_options, pop_plan_options
from harness.errors import PlanError
from harness.spec import LaunchSpec


def render_shell(spec: LaunchSpec) -> str:
    """A POSIX shell script that launches the plan's argv with its environment (local runtime)."""
    lines = [
        "#!/bin/sh",
        f"# harness plan {spec.run_id}: {spec.engine} tp={spec.tp} "
        f"profiles={','.join(spec.profiles)} runtime={spec.runtime}",
    ]
    lines += [f"# warning: {w}" for w in spec.warnings]
    if spec.run_dir:
        lines.append(f"mkdir -p {shlex.quote(spec.run_dir)}")
    for key, value in spec.env.items():
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("exec " + shlex.join(spec.argv))
    return "\n".join(lines) + "\n"


@click.command()
@plan_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "shell", "docker", "compose"]),
    default="json",
    show_default=True,
    help="json: the LaunchSpec; shell: a launch script; docker: a `docker run` line; "
    "compose: a Docker Compose file (docker and compose need --runtime docker).",
)
@runs_dir_option
def plan(fmt: str, runs_dir: str | None, **kwargs: Any) -> None:
    """Print the launch plan (argv, environment, container, deadlines); start nothing.

    \b
    Example:
      harness plan --engine vllm --model ./tiny-model --tp 2 --profile debug --runtime docker
    """
    options = pop_plan_options(kwargs)
    if fmt in {"docker", "compose"} and options["runtime"] != "docker":
        options["runtime"] = "docker"
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
