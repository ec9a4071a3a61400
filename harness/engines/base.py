"""What an engine adapter receives and produces."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from harness.profiles import ArgValue


@dataclass(frozen=True)
class NodeLaunch:
    """One node's place in a multi-node launch (``--nodes N``): vLLM's multiprocessing backend
    runs ``tp / nnodes`` ranks on each node and meets at ``master_addr:master_port`` (the head's
    torch.distributed store). ``cpus`` are this node's cores for the ranks' binding."""

    nnodes: int
    rank: int
    master_addr: str
    master_port: int
    cpus: tuple[int, ...] = ()


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
    #: This node's place in a multi-node launch; None on one machine.
    node: NodeLaunch | None = None


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

    def warnings(self, request: LaunchRequest) -> list[str]:
        """What the plan should tell the user about this launch (e.g. a secret left in argv)."""
        ...


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


def cpu_list_binding(cpus: Sequence[int], ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` ranks over the given cores (a node's allowed
    cores, which need not start at 0): contiguous, disjoint shares, ``"|"`` between ranks.
    ``[1], 1 -> "1"``; ``[0, 1, 2, 3], 2 -> "0-1|2-3"``. Fewer cores than ranks: shared
    round-robin."""
    ordered = sorted(set(cpus))
    if not ordered:
        return cpu_thread_binding(1, ranks)
    if len(ordered) < ranks:
        return "|".join(str(ordered[r % len(ordered)]) for r in range(ranks))
    per_rank = len(ordered) // ranks
    shares = [ordered[r * per_rank : (r + 1) * per_rank] for r in range(ranks)]
    return "|".join(_ranges(share) for share in shares)


def _ranges(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    start = prev = cpus[0]
    for cpu in [*cpus[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def phase(name: str, pattern: str) -> StartupPhase:
    return StartupPhase(name, re.compile(pattern, re.IGNORECASE))


@dataclass(frozen=True)
class SecretFlag:
    """An engine flag whose argument is a secret, and how else the engine can receive it.

    ``env`` names the variable the engine reads instead (``None``: it has none, so the value
    must stay on the command line). ``max_values`` is how many values that variable can hold.
    """

    flag: str
    env: str | None = None
    max_values: int = 1


@dataclass(frozen=True)
class SecretSplit:
    """Engine arguments with secrets moved into environment variables where possible."""

    argv: list[str]
    env: dict[str, str]
    warnings: list[str]


def move_secrets_to_env(
    tokens: Sequence[str], secret_flags: Sequence[SecretFlag], engine: str
) -> SecretSplit:
    """Take secret flags out of ``tokens`` and pass their values by environment instead.

    A command line is readable by every user of the host (``ps``, ``/proc/<pid>/cmdline``);
    a process's environment only by its owner. A flag takes every following token up to the
    next option (``--api-key A B``), or its ``=`` value; a bare flag (``--hf-token`` alone:
    "use the stored login") carries no secret and stays. Values the engine cannot read from
    its environment stay in argv, with a warning.
    """
    by_flag = {s.flag: s for s in secret_flags}
    argv: list[str] = []
    env: dict[str, str] = {}
    warnings: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        name, eq, inline = token.partition("=")
        # argparse front ends such as vLLM's take ``--api_key`` for ``--api-key``.
        name = "--" + name[2:].replace("_", "-") if name.startswith("--") else name
        secret = by_flag.get(name)
        if secret is None:
            argv.append(token)
            continue
        values = [inline] if eq else []
        start = i
        if not eq:
            while i < len(tokens) and not tokens[i].startswith("-"):
                values.append(tokens[i])
                i += 1
        if not values:
            argv.append(token)
            continue
        if secret.env is not None and len(values) <= secret.max_values:
            env[secret.env] = values[-1]
            continue
        argv.append(token)
        argv.extend(tokens[start:i])
        if secret.env is None:
            why = f"{engine} has no environment variable for {name}"
        else:
            why = f"{engine} reads only {secret.max_values} value from {secret.env}"
        warnings.append(
            f"{why}: the value of {name} stays on the server's command line, which every user "
            "of this host can read (ps); harness masks it in every file under runs/"
        )
    return SecretSplit(argv, env, warnings)
