"""``harness tiny-model DIR [--kind text|vlm]``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import click

from harness.cli.options import runs_dir_option
from harness.tinymodel import KINDS, ModelKind, build_tiny_model


@click.command("tiny-model")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="text",
    show_default=True,
    help="text: a Llama; vlm: a dynamic-resolution vision-language model (PaddleOCR-VL-shaped, "
    "served by vLLM's CPU build); qwen2-vl: the same in Qwen2-VL's shape, for GPU hosts "
    "(vLLM and LMDeploy need torchvision for it).",
)
@click.option("--overwrite", is_flag=True, help="Rebuild even if DEST already holds a model.")
@runs_dir_option
def tiny_model(dest: Path, kind: str, overwrite: bool, runs_dir: str | None) -> None:
    """Build an embedded tiny model in DEST, offline, deterministically, in seconds.

    \b
    --kind text: a random-weight Llama (2 layers, hidden 128, 4 heads / 2 KV heads) with a
      locally trained byte-level BPE tokenizer and a chat template.
    --kind vlm: a random-weight vision-language model that takes images at their own
      resolution (one token per 28x28 pixels, up to 12845056 pixels), with its image
      processor; the same tokenizer and a chat template that places images.
    --kind qwen2-vl: the same VLM in Qwen2-VL's shape, for GPU hosts (vLLM's and LMDeploy's
      Qwen2-VL code need torchvision, whose PyPI wheels are CUDA builds that do not load
      with the CPU build of torch).

    Serve it with: harness serve --model DEST --profile eager (add vlm-safe to cap images).

    It writes no run: --runs-dir is accepted (every command takes it) and not used.
    """
    del runs_dir  # accepted like every command's; building a model records no run
    start = time.monotonic()
    path = build_tiny_model(dest, kind=cast(ModelKind, kind), overwrite=overwrite)
    click.echo(f"tiny model in {path} ({time.monotonic() - start:.1f} s)")
