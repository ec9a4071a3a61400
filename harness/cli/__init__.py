"""The ``harness`` command line: thin commands over the library.

One error boundary (:class:`HarnessGroup`) turns every :class:`~harness.errors.HarnessError`
into one line on stderr plus a hint, and the exit code of DESIGN.md; nothing else prints
tracebacks. Each command lives in its own module in this package and is registered below.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from harness import __version__
from harness.errors import HarnessError

# Module name in harness.cli -> attribute holding the click command.
_COMMANDS: list[tuple[str, str]] = [
    ("plan", "plan"),
    ("serve", "serve"),
    ("serve", "ps"),
    ("serve", "down"),
    ("tiny_model", "tiny_model"),
    ("watch", "watch"),
    ("dump", "dump"),
    ("load", "load"),
    ("sim", "sim"),
]


class HarnessGroup(click.Group):
    """The error boundary: one line plus the next command to run, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HarnessError as exc:
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harness")
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory of run directories, for every command [env HARNESS_RUNS_DIR; default ./runs].",
)
def cli(runs_dir: str | None) -> None:
    """Launch vLLM / LMDeploy servers the right way, load them until they hang, capture what
    every process was doing, and compare settings with numbers you can trust.

    Every command takes --runs-dir DIR (or $HARNESS_RUNS_DIR; default ./runs).
    """
    if runs_dir:
        # Subcommands read HARNESS_RUNS_DIR as their --runs-dir default.
        os.environ["HARNESS_RUNS_DIR"] = os.path.abspath(runs_dir)


for _module, _attr in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(f"harness.cli.{_module}"), _attr))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="harness")
