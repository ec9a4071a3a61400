"""``harness shard``: a pre-sharded checkpoint for TP, verified (printing only;
:mod:`harness.shard.run` does it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harness.cli.options import runs_dir_option


@click.command()
@click.argument("model")
@click.option("--tp", type=click.IntRange(min=1), required=True, help="Tensor-parallel size.")
@click.option(
    "--engine",
    type=click.Choice(["vllm", "lmdeploy"]),
    default="vllm",
    show_default=True,
    help="The engine that will serve the copy.",
)
@click.option(
    "--runtime",
    type=click.Choice(["local", "docker"]),
    default="local",
    show_default=True,
    help="Where to run the engine to save it: like the server that will use it.",
)
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the copy [default: $HARNESS_SHARDS_DIR/<model>-<hash>/<engine>-<version>"
    "-<device>-tp<N>, HARNESS_SHARDS_DIR defaulting to ~/.cache/harness/shards].",
)
@click.option("--profile", "profiles", multiple=True, help="Profiles, as for harness serve.")
@click.option(
    "--engine-arg",
    "engine_args",
    multiple=True,
    help="Engine argument, as for harness serve (--dtype, --quantization shape the weights: "
    "serve with the same ones).",
)
@click.option("--image", default=None, help="Container image (--runtime docker).")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--keep-incomplete",
    is_flag=True,
    help="Keep an incomplete result (at DEST.incomplete, marked so no plan serves it).",
)
@runs_dir_option
def shard(
    model: str,
    tp: int,
    engine: str,
    runtime: str,
    dest: Path | None,
    profiles: tuple[str, ...],
    engine_args: tuple[str, ...],
    image: str | None,
    device: str,
    keep_incomplete: bool,
    runs_dir: str | None,
) -> None:
    """Save MODEL pre-sharded for TP = N, so each rank reads only its own part.

    vLLM: its own save_sharded_state path (model-rank-{rank}-part-{part}.safetensors, the
    other files copied), run with the engine, version and arguments the server will use, in
    the same runtime. The result is checked against the source checkpoint (every tensor the
    loader expects, on every rank) before it is published with harness-shard.json; an
    incomplete one is refused (exit 1) naming the missing tensors and why, and removed.
    `harness plan` / `serve` then use a matching copy automatically (--load-format
    sharded_state) and explain every copy they do not use. LMDeploy has no offline conversion
    any more (TurboMind converts while loading): refused.

    Prints the copy's directory.

    \b
    Examples:
      harness shard ./models/qwen --tp 2
      harness shard ./models/qwen --tp 4 --runtime docker --dest /local/shards/qwen-tp4
    """
    from harness.cli.planopts import build_spec
    from harness.rundir import RunDir, new_run_id
    from harness.shard.run import shard as make_shard
    from harness.shard.store import describe

    options: dict[str, Any] = {
        "engine": engine,
        "model": model,
        "tp": tp,
        "profiles": profiles,
        "runtime": runtime,
        "host": "127.0.0.1",
        "port": 8000,
        "image": image,
        "engine_args": engine_args,
        "faults": (),
        "device": device,
        "gpus": None,
        "net_iface": None,
        "host_ip": None,
        "fetch": False,
    }
    run_id = new_run_id(f"shard-{engine}-tp{tp}")
    spec = build_spec(options, runs_dir=runs_dir, run_id=run_id)

    def note(line: str) -> None:
        click.echo(line, err=True)

    run = RunDir(Path(spec.run_dir)).create()
    result = make_shard(spec, run, dest=dest, keep_incomplete=keep_incomplete, echo=note)
    if result.already:
        note(f"already there: a complete copy ({describe(result.meta)})")
    else:
        note(
            f"verified: every tensor on all {tp} ranks ({len(result.meta.files)} files) in "
            f"{result.seconds:.0f} s; harness serve --model {model} --tp {tp} uses it"
        )
    click.echo(str(result.path))
