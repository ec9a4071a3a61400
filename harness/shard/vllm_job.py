"""Save a vLLM pre-sharded checkpoint with vLLM's own ``save_sharded_state`` path.

Runs under the engine's interpreter, here or copied into the server's container (the image
need not hold harness): standard library plus vLLM. It loads the model with the engine
arguments harness planned (``--tensor-parallel-size N`` and the profile's and user's engine
flags), asks every worker to write its state (``model-rank-{rank}-part-{part}.safetensors``,
vLLM's default pattern for TP only), then copies the files that are not weights (config,
tokenizer, chat template, ...) next to them, as vLLM's example
``examples/features/sharded_state/save_sharded_state_offline.py`` does.

It does not judge the result: harness compares the shard with the source checkpoint
afterwards (:mod:`harness.shard.verify`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
#: Bytes per file vLLM writes before starting a new part (its example's default, 5 GiB).
MAX_FILE_BYTES = 5 * 1024**3


def copy_non_weights(source: str, dest: str) -> list[str]:
    """Copy everything but weights and harness's own files from ``source`` into ``dest``."""
    copied = []
    for name in sorted(os.listdir(source)):
        if name.endswith(WEIGHT_SUFFIXES) or name.startswith((".", "harness-")):
            continue
        if name.endswith(".index.json"):
            continue  # the weight map names the source's files, not the shard's
        src = os.path.join(source, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), dirs_exist_ok=True)
        else:
            shutil.copy2(src, os.path.join(dest, name))
        copied.append(name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--result", required=True, help="JSON summary written here")
    parser.add_argument("engine_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    extra = [a for a in args.engine_args if a != "--"]

    from vllm import LLM, EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    engine_parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    base = ["--model", args.source, "--tensor-parallel-size", str(args.tp)]
    parsed, ignored = engine_parser.parse_known_args(base + extra)
    engine_args = EngineArgs.from_cli_args(parsed)
    # Saving needs no CUDA graphs or compilation: load, write, exit.
    engine_args.enforce_eager = True
    started = time.monotonic()
    llm = LLM.from_engine_args(engine_args)
    loaded = time.monotonic()
    os.makedirs(args.dest, exist_ok=True)
    llm.llm_engine.engine_core.save_sharded_state(
        path=args.dest, pattern=None, max_size=MAX_FILE_BYTES
    )
    copied = copy_non_weights(args.source, args.dest)
    import vllm

    result = {
        "vllm_version": getattr(vllm, "__version__", None),
        "ignored_engine_args": ignored,
        "copied": copied,
        "load_seconds": round(loaded - started, 2),
        "save_seconds": round(time.monotonic() - loaded, 2),
    }
    with open(args.result, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    # vLLM's engine core and workers are separate processes: shut them down before exiting.
    del llm
    return 0


if __name__ == "__main__":
    sys.exit(main())
