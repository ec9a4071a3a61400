"""What an engine adapter receives and produces."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from harness.profiles import ArgValue


@dataclass(frozen=True)
class LaunchRequest:
    """Everything an adapter needs to build argv; all values already validated."""

    model: str
    served_model_name: str
    tp: int
    host: str
    port: int
    python: str
    device: Literal["cpu", "cuda"]
    cpu_count: int
    profile_args: Mapping[str, ArgValue] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()


@dataclass(frozen=True)
class StartupPhase:
    """A startup phase recognised from a server log line."""

    name: str
    pattern: re.Pattern[str]


class EngineAdapter(Protocol):
    """Turns a :class:`LaunchRequest` into argv and environment for one engine."""

    name: str
    #: Flags harness sets itself from its own options; ``--engine-arg`` may not set them.
    managed_flags: Mapping[str, str]
    startup_phases: tuple[StartupPhase, ...]

    def argv(self, request: LaunchRequest) -> list[str]: ...

    def env(self, request: LaunchRequest) -> dict[str, str]: ...


def flags_to_argv(args: Mapping[str, ArgValue]) -> list[str]:
    """``{"--enforce-eager": True, "--max-model-len": 512}`` -> argv tokens, in order."""
    out: list[str] = []
    for flag, value in args.items():
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        else:
            out.extend([flag, str(value)])
    return out


def cpu_thread_binding(cpu_count: int, tp: int) -> str:
    """vLLM CPU's ``VLLM_CPU_OMP_THREADS_BIND``: one disjoint core range per TP rank.

    2 cores, TP=2 -> ``"0|1"``; 8 cores, TP=2 -> ``"0-3|4-7"``. With fewer cores than ranks the
    ranks share cores round-robin (slow, but it starts).
    """
    if cpu_count >= tp:
        per_rank = cpu_count // tp
        ranges = []
        for rank in range(tp):
            first = rank * per_rank
            last = first + per_rank - 1
            ranges.append(str(first) if first == last else f"{first}-{last}")
        return "|".join(ranges)
    return "|".join(str(rank % max(cpu_count, 1)) for rank in range(tp))


def phase(name: str, pattern: str) -> StartupPhase:
    return StartupPhase(name, re.compile(pattern, re.IGNORECASE))
