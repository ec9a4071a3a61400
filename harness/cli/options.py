"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def runs_dir_option(func: F) -> F:
    """``--runs-dir DIR``: where run directories live (else $HARNESS_RUNS_DIR, else ./runs)."""
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False),
        envvar="HARNESS_RUNS_DIR",
        default=None,
        help="Directory of run directories [env HARNESS_RUNS_DIR; default ./runs].",
    )(func)


def core_options(func: F) -> F:
    """``--core`` and ``--core-timeout``: core files (gcore) in incident bundles."""
    func = click.option(
        "--core-timeout",
        type=click.FloatRange(min=1),
        default=60.0,
        show_default=True,
        help="Per-process gcore deadline (seconds); gcore is killed after it.",
    )(func)
    return click.option(
        "--core",
        "core",
        is_flag=True,
        help="Also take core files (gcore, from gdb) of the odd process out and its peers "
        "(at most 4) into cores/; cores are about as large as the processes' memory.",
    )(func)


def _use_signatures(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    if not values:
        return
    import os

    from harness.watchdog.signatures import ENV_VAR, load_catalogue

    paths = [os.path.abspath(v) for v in values]
    load_catalogue(paths)  # a bad file is one line and exit 2, before anything starts
    # Every process of the run reads the same files: a detached watcher, campaign steps.
    os.environ[ENV_VAR] = os.pathsep.join(paths)


def signatures_option(func: F) -> F:
    """``--signatures FILE`` (repeatable): the user's hang signatures, tried before the shipped
    catalogue on every incident (validated at once; exported as $HARNESS_SIGNATURES)."""
    return click.option(
        "--signatures",
        multiple=True,
        metavar="FILE",
        expose_value=False,
        callback=_use_signatures,
        help="A YAML file of known hang signatures (repeatable), tried before harness's own "
        "catalogue; see docs/watchdog.md [env HARNESS_SIGNATURES].",
    )(func)
