"""LMDeploy: ``lmdeploy serve api_server MODEL --tp N --server-name H --server-port P ...``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from harness.engines.base import (
    LaunchRequest,
    SecretFlag,
    SecretSplit,
    StartupPhase,
    flags_to_argv,
    move_secrets_to_env,
    phase,
)


class LMDeployAdapter:
    name = "lmdeploy"
    managed_flags: Mapping[str, str] = MappingProxyType(
        {
            "--server-name": "--host",
            "--server-port": "--port",
            "--tp": "--tp",
            "--model-name": "the model name harness derives",
        }
    )
    # LMDeploy (0.18) reads its API keys only from ``--api-keys`` (lmdeploy/cli/utils.py):
    # no variable, so they stay on the command line, with a warning, and are masked in files.
    secret_flags: tuple[SecretFlag, ...] = (SecretFlag("--api-keys"),)
    startup_phases: tuple[StartupPhase, ...] = (
        phase("loading weights", r"loading weights|load model|Loading checkpoint"),
        phase("KV cache", r"cache block|kv cache|num_gpu_blocks|max_batch_size"),
        phase("compile / graph capture", r"graph capture|capturing|cuda graph|warming up"),
        phase("starting API server", r"HINT:\s+Please open|Uvicorn running|Started server process"),
        phase("ready", r"Application startup complete"),
    )

    def argv(self, request: LaunchRequest) -> list[str]:
        argv = [
            "lmdeploy",
            "serve",
            "api_server",
            request.model,
            "--model-name",
            request.served_model_name,
            "--server-name",
            request.host,
            "--server-port",
            str(request.port),
            "--tp",
            str(request.tp),
        ]
        return argv + self._secrets(request).argv

    def env(self, request: LaunchRequest) -> dict[str, str]:
        return dict(self._secrets(request).env)

    def warnings(self, request: LaunchRequest) -> list[str]:
        return self._secrets(request).warnings

    def _secrets(self, request: LaunchRequest) -> SecretSplit:
        args = [*flags_to_argv(request.profile_args), *request.extra_args]
        return move_secrets_to_env(args, self.secret_flags, "LMDeploy")
