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
