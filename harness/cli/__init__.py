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

# Command name -> (module in harness.cli, attribute holding the click command).
_COMMANDS: list[tuple[str, str, str]] = [
    ("plan", "plan", "plan"),
    ("serve", "serve", "serve"),
    ("ps", "serve", "ps"),
    ("down", "serve", "down"),
    ("tiny-model", "tiny_model", "tiny_model"),
    ("watch", "watch", "watch"),
    ("dump", "dump", "dump"),
    ("load", "load", "load"),
    ("sim", "sim", "sim"),
    ("repro-startup", "repro", "repro_startup"),
    ("soak", "soak", "soak"),
    ("compare", "compare", "compare"),
    ("report", "report", "report"),
    ("replay", "replay", "replay"),
    ("campaign-task", "campaign_task", "campaign_task"),
    ("doctor", "doctor", "doctor"),
    ("fetch", "fetch", "fetch"),
    ("shard", "shard", "shard"),
]


#: Commands harness runs itself (a SLURM array task), not listed in --help.
_HIDDEN = {"campaign-task"}


class HarnessGroup(click.Group):
    """The error boundary: one line plus the next command to run, never a traceback.

    Commands are imported when they run (or when ``--help`` lists them), not at start-up:
    importing every command module costs about a second here, which ``harness serve`` would
    add to every server's time to healthy (benchmarks/serve_overhead.py).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, _module, _attr in _COMMANDS if name not in _HIDDEN)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, attr in _COMMANDS:
            if name == cmd_name:
                command = getattr(importlib.import_module(f"harness.cli.{module}"), attr)
                assert isinstance(command, click.Command)
                return command
        return None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HarnessError as exc:
            click.echo(f"error: {_in_cli_words(exc)}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _in_cli_words(exc: HarnessError) -> str:
    """The error's message, a load setting's rule worded with its command-line flag."""
    if "harness.load.config" in sys.modules:  # else exc cannot be a LoadSettingError
        from harness.load.config import LoadSettingError

        if isinstance(exc, LoadSettingError):
            from harness.cli.loadopts import FLAG_MESSAGES

            return FLAG_MESSAGES.get(exc.code, exc.message)
    return exc.message


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="harness")
