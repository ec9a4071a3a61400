"""``harness tiny-model DIR``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from harness.cli.options import runs_dir_option
from harness.tinymodel import build_tiny_model


@click.command("tiny-model")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Rebuild even if DEST already holds a model.")
@runs_dir_option
def tiny_model(dest: Path, overwrite: bool, runs_dir: str | None) -> None:
    """Build the embedded tiny model in DEST: a random-weight Llama (2 layers, hidden 128) with a
    locally trained byte-level BPE tokenizer and a chat template. Offline, deterministic,
    seconds. Serve it with: harness serve --model DEST --profile default,eager

    It writes no run: --runs-dir is accepted (every command takes it) and not used.
    """
    del runs_dir  # accepted like every command's; building a model records no run
    start = time.monotonic()
    path = build_tiny_model(dest, overwrite=overwrite)
    click.echo(f"tiny model in {path} ({time.monotonic() - start:.1f} s)")
