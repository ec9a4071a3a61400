"""``harness fetch``: a checkpoint onto local disk (printing only; :mod:`harness.fetch` does it)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to fetch into [default: $HARNESS_MODELS_DIR/<source>/<id>, "
    "HARNESS_MODELS_DIR defaulting to ~/.cache/harness/models].",
)
@click.option("--revision", default=None, help="Branch, tag or commit [default: main].")
@click.option(
    "--source",
    type=click.Choice(["hf", "modelscope"]),
    default="hf",
    show_default=True,
    help="Hugging Face (HF_ENDPOINT, HF_TOKEN honoured) or ModelScope (MODELSCOPE_DOMAIN).",
)
@click.option("--force", is_flag=True, help="Fetch onto a network filesystem anyway.")
def fetch(model: str, dest: Path | None, revision: str | None, source: str, force: bool) -> None:
    """Download MODEL (a hub id) to local disk, or copy a local model directory to --dest.

    Only what serving needs: config, tokenizer, chat template, remote code, and the weights in
    one format (safetensors when the repository has them). Resumable: after an interruption run
    the same command again. Every file's size is checked, and its hash where the hub gives one.
    A network-filesystem destination is refused unless --force. Prints the local path to pass
    to --model; `harness serve --model ID` uses it automatically (or downloads with --fetch).

    Exit codes: 2 unknown model id or bad destination; 3 no hub reachable, disk full, a file
    that does not match the hub.

    \b
    Examples:
      harness fetch Qwen/Qwen2.5-0.5B-Instruct
      harness fetch Qwen/Qwen2.5-0.5B-Instruct --source modelscope
      harness fetch /nfs/models/qwen --dest /local/models/qwen
    """
    from harness.fetch import fetch as fetch_model
    from harness.userfiles import human_size

    def note(line: str) -> None:
        click.echo(line, err=True)

    result = fetch_model(model, dest=dest, revision=revision, source=source, force=force, echo=note)
    if result.already:
        note(f"{model}: already a complete local copy")
    else:
        note(
            f"fetched {len(result.files)} files ({human_size(result.downloaded_bytes)} this run) "
            f"in {result.seconds:.1f} s; sizes and hashes checked"
        )
    click.echo(str(result.path))
