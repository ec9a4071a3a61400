"""The simulated engine as a plan target (``--engine sim``); the simulator is harness.sim."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from harness.engines.base import LaunchRequest, StartupPhase, flags_to_argv, phase


class SimAdapter:
    name = "sim"
    managed_flags: Mapping[str, str] = MappingProxyType(
        {
            "--host": "--host",
            "--port": "--port",
            "--tp": "--tp",
            "--model-name": "--model",
            "--fault": "--fault",
        }
    )
    startup_phases: tuple[StartupPhase, ...] = (
        phase("loading weights", r"Loading weights"),
        phase("starting workers", r"Worker_TP\d|worker"),
        phase("starting API server", r"Starting"),
        phase("ready", r"Application startup complete"),
    )

    def argv(self, request: LaunchRequest) -> list[str]:
        from harness.engines.sim import sim_argv

        extra = flags_to_argv(request.profile_args) + list(request.extra_args)
        return sim_argv(
            request.python,
            host=request.host,
            port=request.port,
            tp=request.tp,
            served_model_name=request.served_model_name,
            faults=list(request.faults),
            extra_args=extra,
        )

    def env(self, request: LaunchRequest) -> dict[str, str]:
        return {}

    def warnings(self, request: LaunchRequest) -> list[str]:
        return []
