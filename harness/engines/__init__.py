"""Engine adapters: turn a launch request into the engine's argv and environment (pure)."""

from __future__ import annotations

from harness.engines.base import EngineAdapter, LaunchRequest, StartupPhase
from harness.errors import PlanError


def get_adapter(engine: str) -> EngineAdapter:
    """The adapter for ``engine`` (vllm, lmdeploy, sim)."""
    from harness.engines.lmdeploy import LMDeployAdapter
    from harness.engines.sim import SimAdapter
    from harness.engines.vllm import VLLMAdapter

    adapters: dict[str, EngineAdapter] = {
        "vllm": VLLMAdapter(),
        "lmdeploy": LMDeployAdapter(),
        "sim": SimAdapter(),
    }
    try:
        return adapters[engine]
    except KeyError:
        raise PlanError(f"unknown engine {engine!r} (valid: {', '.join(adapters)})") from None


__all__ = ["EngineAdapter", "LaunchRequest", "StartupPhase", "get_adapter"]
