"""The launch plan: (engine, model, TP, profiles, runtime options) -> frozen LaunchSpec.

:func:`make_plan` is pure: everything it needs from the machine (GPU or not, core count, network
interface, interpreter, the caller's environment) and from the model's ``config.json`` (heads,
KV heads, vocabulary) arrives in :class:`HostFacts`, :class:`ModelFacts` and
:class:`PlanRequest`; :mod:`harness.hostfacts` gathers them.

TP is checked at plan time with the engines' own rules (:func:`tp_misfit`) and against the
host (GPUs; cores for vLLM's CPU backend), so a TP the engine would refuse after minutes of
startup is one line and exit code 2 listing the valid values.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, cast

from harness.containerplan import ENGINE_NAMES
from harness.engines import LaunchRequest, get_adapter
from harness.engines.base import NodeLaunch
from harness.errors import PlanError
from harness.imagelimits import image_limit_warnings
from harness.nodeplan import (
    DEFAULT_MASTER_PORT,
    NET_PROFILE,
    NodeFacts,
    check_multi_node,
    is_loopback,
    network_problems,
    node_networks,
    plan_nodes,
)
from harness.profiles import MAX_SECONDS, PLACEHOLDERS, compose
from harness.spec import (
    ContainerSpec,
    Deadlines,
    EngineName,
    LaunchSpec,
    NodeSpec,
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


#: vLLM pads the vocabulary to a multiple of this before sharding it over the TP ranks
#: (``DEFAULT_VOCAB_PADDING_SIZE`` in vllm/model_executor/layers/vocab_parallel_embedding.py).
VLLM_VOCAB_PADDING = 64

#: TP values a message lists go no higher.
MAX_LISTED_TP = 1024

#: vLLM CPU's per-rank core binding; harness sets one disjoint core set per rank unless a
#: profile sets it.
CPU_BIND_VARIABLE = "VLLM_CPU_OMP_THREADS_BIND"


@dataclass(frozen=True)
class ModelFacts:
    """What a model's ``config.json`` says about splitting it over TP ranks.

    ``None`` means not stated, or stated in a form harness does not check (the engine still
    does); :func:`harness.hostfacts.model_facts` reads them.
    """

    source: str
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    vocab_size: int | None = None


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
    model_facts: ModelFacts | None = None
    #: The name clients use when it is not derived from ``model`` (a hub id served from its
    #: local copy, a sharded copy named after its source).
    served_name: str | None = None
    #: A pre-sharded copy to serve instead of ``model`` (vLLM: ``--load-format sharded_state``).
    sharded_copy: str | None = None
    #: What choosing the model's copy has to say (local copy used, sharded copies not used).
    model_notes: tuple[str, ...] = ()
    #: Multi-node (``--nodes N --node-hosts ...``): every node's facts, the head first; empty
    #: on one machine (:mod:`harness.nodeplan`).
    nodes: tuple[NodeFacts, ...] = ()
    #: ``--net-iface`` / ``--host-ip`` per node (host -> value; ``""``: every node).
    node_ifaces: Mapping[str, str] = field(default_factory=dict)
    node_addresses: Mapping[str, str] = field(default_factory=dict)
    #: The head's torch.distributed port (vLLM ``--master-port``).
    master_port: int = DEFAULT_MASTER_PORT


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


def tp_misfit(tp: int, facts: ModelFacts, engine: str) -> str | None:
    """Why ``tp`` ranks cannot split this model on ``engine``; ``None`` when they can (as far
    as the facts tell). The rules are the engines' own:

    - attention heads: ``heads % tp == 0`` (vLLM ``ModelConfig.verify_with_parallel_config``;
      LMDeploy's PyTorch engine ``get_num_qkv_head_by_tp``);
    - KV heads: split when ``tp <= kv`` (``kv % tp == 0``), replicated when ``tp > kv``
      (``tp % kv == 0``): vLLM's ``QKVParallelLinear``, LMDeploy's PyTorch engine, and
      TurboMind, which repeats KV heads up to a multiple of TP;
    - vocabulary, vLLM only: ``VocabParallelEmbedding`` pads it to a multiple of 64 and
      divides that by TP (TurboMind splits the embedding along the hidden size and pads the
      LM head per rank).
    """
    heads = facts.num_attention_heads
    if heads is not None and heads % tp:
        return f"{heads} attention heads do not split into {tp} equal parts"
    kv = facts.num_kv_heads
    if kv is not None and (kv % tp if tp <= kv else tp % kv):
        return (
            f"{kv} KV heads neither split into {tp} equal parts nor replicate evenly onto "
            f"{tp} ranks (TP must divide {kv} or be a multiple of it)"
        )
    vocab = facts.vocab_size
    if engine == "vllm" and vocab is not None:
        padded = -(-vocab // VLLM_VOCAB_PADDING) * VLLM_VOCAB_PADDING
        if padded % tp:
            return (
                f"vLLM shards the vocabulary of {vocab} tokens (padded to {padded}) over the "
                f"ranks, and {padded} is not divisible by {tp}"
            )
    return None


def _format_values(values: list[int]) -> str:
    consecutive = values == list(range(values[0], values[0] + len(values))) if values else False
    if consecutive and len(values) > 6:
        return f"{values[0]} to {values[-1]}"
    return ", ".join(str(v) for v in values) or "none"


def _check_tp(
    request: PlanRequest,
    host: HostFacts,
    profile_env: Mapping[str, str],
    where: str = "this host has",
) -> list[str]:
    """Refuse a TP the model or the host cannot take (one line listing the valid values);
    return warnings for what a profile chose to override. ``where`` names the machines whose
    cores or GPUs ``host`` counts (several nodes: their sum)."""
    tp = request.tp
    facts = request.model_facts if request.engine != "sim" else None
    limit: tuple[int, str] | None = None
    binds_cpus = request.engine == "vllm" and host.device == "cpu"
    if binds_cpus and CPU_BIND_VARIABLE not in profile_env:
        limit = (host.cpu_count, "cores")
    elif host.device == "cuda" and host.gpu_count:
        limit = (host.gpu_count, "GPUs")
    # The values a message lists: up to the heads (no TP above them splits a model), else up
    # to the host's limit; never more than MAX_LISTED_TP candidates.
    heads = facts.num_attention_heads if facts else None
    upper = min(MAX_LISTED_TP, heads or (limit[0] if limit else 64))
    fits_model = [
        t
        for t in range(1, upper + 1)
        if facts is None or tp_misfit(t, facts, request.engine) is None
    ]
    here = [t for t in fits_model if limit is None or t <= limit[0]]
    beyond = fits_model[len(here) :]

    misfit = tp_misfit(tp, facts, request.engine) if facts else None
    if misfit is not None:
        valid = f"valid: {_format_values(here)}"
        if beyond and limit is not None:
            needs = "needs" if len(beyond) == 1 else "need"
            valid += f"; {_format_values(beyond)} {needs} more {limit[1]} than {where}"
        assert facts is not None
        raise PlanError(
            f"--tp {tp} does not fit {request.model}: {misfit} ({valid})",
            hint=f"checked against {facts.source} with "
            f"{ENGINE_NAMES.get(request.engine, request.engine)}'s rules",
        )
    if limit is not None and tp > limit[0]:
        count, unit = limit
        if unit == "GPUs":
            raise PlanError(
                f"--tp {tp} needs {tp} GPUs but {where} {count} (valid: {_format_values(here)})",
                hint="lower --tp, or plan for another host with --device cuda",
            )
        # vLLM CPU binds each rank's OpenMP threads to its own cores, and its shared-memory
        # all-reduce busy-waits for the peers (csrc/cpu/shm.cpp, wait_for_one: a spin loop on
        # _mm_pause): two ranks on one core wait on each other a scheduler time slice at a
        # time, in every collective. vLLM's own automatic binding refuses fewer NUMA nodes (or,
        # simulated, CPUs) than ranks. Refused rather than warned: it looks like the hangs
        # this tool hunts.
        raise PlanError(
            f"--tp {tp} needs {tp} cores for vLLM's CPU backend (one core set per rank, "
            f"{CPU_BIND_VARIABLE}) but {where} {count} (valid: {_format_values(here)})",
            hint=f"lower --tp, run where more cores are free, or set {CPU_BIND_VARIABLE} in a "
            "profile to bind the ranks yourself",
        )
    warnings: list[str] = []
    if binds_cpus and CPU_BIND_VARIABLE in profile_env and tp > host.cpu_count:
        warnings.append(
            f"{tp} ranks share {host.cpu_count} cores under the profile's {CPU_BIND_VARIABLE}="
            f"{profile_env[CPU_BIND_VARIABLE]}: ranks on one core starve each other, which "
            "looks like a hang"
        )
    return warnings


def make_plan(request: PlanRequest, host: HostFacts) -> LaunchSpec:
    """Plan one launch. Raises :class:`~harness.errors.BadInput` subclasses on bad input."""
    if request.tp < 1:
        raise PlanError(f"--tp must be at least 1 (got {request.tp})")
    if not 1 <= request.port <= 65535:
        raise PlanError(f"--port must be between 1 and 65535 (got {request.port})")
    if request.faults and request.engine != "sim":
        raise PlanError("--fault is only for --engine sim (the simulated engine)")
    adapter = get_adapter(request.engine)
    run_dir = os.path.join(request.runs_root, request.run_id)
    networks = node_networks(request)
    variables: dict[str, str | None] = {
        "run_dir": run_dir,
        "iface": networks[0].iface if networks else host.iface,
        "host_ip": networks[0].address if networks else host.host_ip,
        "model": request.model,
        "tp": str(request.tp),
        "port": str(request.port),
    }
    assert set(variables) == set(PLACEHOLDERS)
    profiles = list(request.profiles) or ["default"]
    if networks and NET_PROFILE not in profiles:
        # Across nodes the network is always pinned, per node (the field guides' first fix).
        profiles.insert(profiles.index("default") + 1 if "default" in profiles else 0, NET_PROFILE)
    composed = compose(profiles, request.engine, variables)
    if networks:
        count = len(networks)
        tp_warnings = _check_tp(request, host, composed.env, where=f"the {count} nodes have")
    else:
        tp_warnings = _check_tp(request, host, composed.env)

    extra = split_engine_args(request.engine_args)
    _check_managed(extra, adapter.managed_flags, request.engine)
    engine_model = request.sharded_copy or request.model
    if request.sharded_copy and request.engine == "vllm":
        extra += ["--load-format", "sharded_state"]
    for flag in composed.args:
        if flag in adapter.managed_flags:
            raise PlanError(
                f"a profile sets {flag}, which harness manages; use {adapter.managed_flags[flag]}"
            )
    in_container = request.runtime == "docker"
    bind_host = request.host
    if networks:
        check_multi_node(request, composed)
        if is_loopback(request.host) or request.host == "localhost":
            # harness (and every client) reaches the head from another machine: a loopback
            # bind would make the server unreachable; the head's own address is the safe one.
            bind_host = networks[0].address
    elif in_container:
        from harness.containerplan import engine_bind_host

        # In a bridge network the engine listens on every container interface; Docker publishes
        # the port on the requested host address only.
        bind_host = engine_bind_host(composed.container.network_mode or "host", request.host)
    head = (
        NodeLaunch(
            nnodes=len(networks),
            rank=0,
            master_addr=networks[0].address,
            master_port=request.master_port,
            cpus=request.nodes[0].cpus,
        )
        if networks
        else None
    )
    launch = LaunchRequest(
        model=engine_model,
        served_model_name=request.served_name or served_model_name(request.model),
        tp=request.tp,
        host=bind_host,
        port=request.port,
        python="python3" if in_container else host.python,
        device=host.device,
        cpu_count=host.cpu_count,
        profile_args=composed.args,
        extra_args=tuple(extra),
        faults=request.faults,
        node=head,
    )
    if head is not None:
        launch = replace(launch, python="python3" if in_container else request.nodes[0].python)
    argv = adapter.argv(launch)
    env = {**adapter.env(launch), **composed.env}
    # Unbuffered output: log lines must reach server.log (and the phase display) as they happen.
    env.setdefault("PYTHONUNBUFFERED", "1")

    warnings = list(request.model_notes) + list(composed.warnings) + tp_warnings
    warnings += adapter.warnings(launch)
    warnings += image_limit_warnings(request.engine, argv, composed.load)
    if not in_container:
        warnings += _leaked_debug_variables(request.caller_env, env)
        if request.engine == "lmdeploy" and host.device == "cpu":
            warnings.append(
                "LMDeploy has no CPU backend: this plan starts only on a host with a GPU; "
                "plan for one with --device cuda"
            )

    deadlines = composed.deadlines
    if request.startup_timeout_s is not None:
        if not 0 < request.startup_timeout_s <= MAX_SECONDS:
            raise PlanError(f"--startup-timeout must be positive and at most {MAX_SECONDS} s")
        deadlines = Deadlines(**{**deadlines.model_dump(), "startup_s": request.startup_timeout_s})
    watch = composed.watch
    overrides: dict[str, object] = {}
    if request.stall_after_s is not None:
        if not 0 < request.stall_after_s <= MAX_SECONDS:
            raise PlanError(f"--stall-after must be positive and at most {MAX_SECONDS} s")
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
            model=engine_model,
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

    nodes: list[NodeSpec] = []
    if networks:
        nodes = plan_nodes(
            request,
            adapter,
            launch,
            profiles,
            variables,
            networks,
            container,
            head_argv=argv,
            head_env=env,
        )
        # Said here, FAILed by `harness doctor --nodes`, named in a startup incident.
        warnings += network_problems(nodes)
    base_url = f"http://{_url_host(bind_host if networks else request.host)}:{request.port}"
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
        sharded_copy=request.sharded_copy,
        nodes=nodes,
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
