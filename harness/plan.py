"""The launch plan: (engine, model, TP, profiles, runtime options) -> frozen LaunchSpec.

:func:`make_plan` is pure: everything it needs from the machine (GPU or not, core count, network
interface, interpreter, the caller's environment) arrives in :class:`HostFacts` and
:class:`PlanRequest`; :mod:`harness.hostfacts` gathers them.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

from harness.engines import LaunchRequest, get_adapter
from harness.errors import PlanError
from harness.profiles import PLACEHOLDERS, compose
from harness.spec import (
    ContainerSpec,
    Deadlines,
    EngineName,
    LaunchSpec,
    OnHang,
    RuntimeName,
    WatchSettings,
)

#: Variables that belong in debug runs only: the field guides warn that they slow everything down
#: and are easy to leave set in a shell.
DEBUG_ONLY_VARIABLES: dict[str, str] = {
    "CUDA_LAUNCH_BLOCKING": "serialises every CUDA launch",
    "NCCL_DEBUG": "NCCL logging (TRACE/INFO) floods the log and slows collectives",
    "VLLM_TRACE_FUNCTION": "logs every Python function call",
}


@dataclass(frozen=True)
class HostFacts:
    """What the planner needs to know about the machine the server will run on."""

    device: Literal["cpu", "cuda"]
    cpu_count: int
    gpu_count: int = 0
    python: str = "python3"
    iface: str | None = None
    host_ip: str | None = None


@dataclass(frozen=True)
class PlanRequest:
    """The user's request, as given on the command line (validated here)."""

    engine: str
    model: str
    run_id: str
    runs_root: str
    tp: int = 1
    profiles: tuple[str, ...] = ("default",)
    runtime: RuntimeName = "local"
    host: str = "127.0.0.1"
    port: int = 8000
    image: str | None = None
    engine_args: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()
    model_is_local_dir: bool = False
    startup_timeout_s: float | None = None
    stall_after_s: float | None = None
    on_hang: OnHang | None = None
    watch: bool | None = None
    gpus: str | int | list[int] | None = None
    caller_env: Mapping[str, str] = field(default_factory=dict)


def served_model_name(model: str) -> str:
    """The name clients use: a local directory's basename, or the hub id as given."""
    stripped = model.rstrip("/")
    if os.sep in stripped and (stripped.startswith(("/", ".", "~")) or stripped.count("/") > 1):
        return os.path.basename(stripped)
    return stripped


def split_engine_args(values: tuple[str, ...]) -> list[str]:
    """Each ``--engine-arg`` value is shell-split: ``"--max-model-len 512"`` is two tokens."""
    out: list[str] = []
    for value in values:
        try:
            out.extend(shlex.split(value))
        except ValueError as exc:
            raise PlanError(f"cannot parse --engine-arg {value!r}: {exc}") from None
    return out


def _check_managed(tokens: list[str], managed: Mapping[str, str], engine: str) -> None:
    for token in tokens:
        flag = token.split("=", 1)[0]
        if flag in managed:
            raise PlanError(
                f"--engine-arg {token!r} sets a flag harness manages for {engine}; "
                f"use {managed[flag]} instead"
            )


def _leaked_debug_variables(
    caller_env: Mapping[str, str], planned_env: Mapping[str, str]
) -> list[str]:
    warnings = []
    for name, why in DEBUG_ONLY_VARIABLES.items():
        value = caller_env.get(name)
        if not value or name in planned_env:
            continue
        if name == "NCCL_DEBUG" and value.upper() not in {"TRACE", "INFO"}:
            continue
        if value in {"0", ""}:
            continue
        warnings.append(
            f"{name}={value} from your shell reaches the server ({why}); this is not a debug "
            f"run: unset it, or use --profile debug to mean it"
        )
    return warnings


def make_plan(request: PlanRequest, host: HostFacts) -> LaunchSpec:
    """Plan one launch. Raises :class:`~harness.errors.BadInput` subclasses on bad input."""
    if request.tp < 1:
        raise PlanError(f"--tp must be at least 1 (got {request.tp})")
    if not 1 <= request.port <= 65535:
        raise PlanError(f"--port must be between 1 and 65535 (got {request.port})")
    if host.device == "cuda" and host.gpu_count and request.tp > host.gpu_count:
        raise PlanError(
            f"--tp {request.tp} needs {request.tp} GPUs but this host has {host.gpu_count}",
            hint="lower --tp, or plan for another host with --device cuda",
        )
    if request.faults and request.engine != "sim":
        raise PlanError("--fault is only for --engine sim (the simulated engine)")
    adapter = get_adapter(request.engine)
    run_dir = os.path.join(request.runs_root, request.run_id)
    variables: dict[str, str | None] = {
        "run_dir": run_dir,
        "iface": host.iface,
        "host_ip": host.host_ip,
        "model": request.model,
        "tp": str(request.tp),
        "port": str(request.port),
    }
    assert set(variables) == set(PLACEHOLDERS)
    profiles = list(request.profiles) or ["default"]
    composed = compose(profiles, request.engine, variables)

    extra = split_engine_args(request.engine_args)
    _check_managed(extra, adapter.managed_flags, request.engine)
    for flag in composed.args:
        if flag in adapter.managed_flags:
            raise PlanError(
                f"a profile sets {flag}, which harness manages; use {adapter.managed_flags[flag]}"
            )
    if request.engine == "sim":
        from harness.engines.sim import validate_fault

        for fault in request.faults:
            validate_fault(fault)

    in_container = request.runtime == "docker"
    bind_host = request.host
    if in_container:
        from harness.containerplan import engine_bind_host

        # In a bridge network the engine listens on every container interface; Docker publishes
        # the port on the requested host address only.
        bind_host = engine_bind_host(composed.container.network_mode or "host", request.host)
    launch = LaunchRequest(
        model=request.model,
        served_model_name=served_model_name(request.model),
        tp=request.tp,
        host=bind_host,
        port=request.port,
        python="python3" if in_container else host.python,
        device=host.device,
        cpu_count=host.cpu_count,
        profile_args=composed.args,
        extra_args=tuple(extra),
        faults=request.faults,
    )
    argv = adapter.argv(launch)
    env = {**adapter.env(launch), **composed.env}
    # Unbuffered output: log lines must reach server.log (and the phase display) as they happen.
    env.setdefault("PYTHONUNBUFFERED", "1")

    warnings = list(composed.warnings) + adapter.warnings(launch)
    if not in_container:
        warnings += _leaked_debug_variables(request.caller_env, env)

    deadlines = composed.deadlines
    if request.startup_timeout_s is not None:
        if request.startup_timeout_s <= 0:
            raise PlanError("--startup-timeout must be positive")
        deadlines = Deadlines(**{**deadlines.model_dump(), "startup_s": request.startup_timeout_s})
    watch = composed.watch
    overrides: dict[str, object] = {}
    if request.stall_after_s is not None:
        if request.stall_after_s <= 0:
            raise PlanError("--stall-after must be positive")
        overrides["stall_after_s"] = request.stall_after_s
    if request.on_hang is not None:
        overrides["on_hang"] = request.on_hang
    if request.watch is not None:
        overrides["enabled"] = request.watch
    if overrides:
        watch = WatchSettings(**{**watch.model_dump(), **overrides})

    container: ContainerSpec | None = None
    if in_container:
        from harness.containerplan import container_spec

        container = container_spec(
            engine=request.engine,
            device=host.device,
            model=request.model,
            model_is_local_dir=request.model_is_local_dir,
            tp=request.tp,
            run_id=request.run_id,
            run_dir=run_dir,
            host=request.host,
            port=request.port,
            options=composed.container,
            image=request.image,
            gpus=request.gpus,
        )
    elif request.image:
        raise PlanError("--image only applies to --runtime docker")

    base_url = f"http://{_url_host(request.host)}:{request.port}"
    return LaunchSpec(
        run_id=request.run_id,
        run_dir=run_dir,
        engine=adapter_engine(request.engine),
        model=request.model,
        tp=request.tp,
        profiles=profiles,
        runtime=request.runtime,
        host=request.host,
        port=request.port,
        argv=argv,
        env=env,
        container=container,
        health_url=f"{base_url}/health",
        base_url=base_url,
        served_model_name=launch.served_model_name,
        deadlines=deadlines,
        watch=watch,
        load=composed.load,
        device=host.device,
        rlimits=dict(composed.container.ulimits),
        faults=list(request.faults),
        warnings=warnings,
    )


def _url_host(host: str) -> str:
    """Where a client connects: a wildcard bind address is reached through loopback."""
    if host in {"0.0.0.0", "::", ""}:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def adapter_engine(name: str) -> EngineName:
    """Narrow a validated engine name to the spec's literal type."""
    if name in ("vllm", "lmdeploy", "sim"):
        return cast(EngineName, name)
    raise PlanError(f"unknown engine {name!r} (valid: vllm, lmdeploy, sim)")
