"""LMDeploy: ``lmdeploy serve api_server MODEL --tp N --server-name H --server-port P ...``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from harness.engines.base import LaunchRequest, StartupPhase, flags_to_argv, phase


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
        argv += flags_to_argv(request.profile_args)
        argv += list(request.extra_args)
        return argv

    def env(self, request: LaunchRequest) -> dict[str, str]:
        return {}
