"""The plan options shared by plan, serve and the campaign commands, and turning them into a
LaunchSpec."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import click

from harness import hostfacts, modelcopies, nodefacts
from harness.errors import PlanError
from harness.nodeplan import DEFAULT_MASTER_PORT, NodeFacts, check_layout, parse_per_node
from harness.plan import HostFacts, PlanRequest, make_plan
from harness.profiles import split_profile_list
from harness.rundir import new_run_id, runs_root
from harness.spec import LaunchSpec

F = TypeVar("F", bound=Callable[..., Any])

_PLAN_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--engine",
        type=click.Choice(["vllm", "lmdeploy", "sim"]),
        default="vllm",
        show_default=True,
        help="Serving engine (sim: harness's simulated engine).",
    ),
    click.option(
        "--model",
        required=True,
        help="Model directory or hub id (build a tiny local one with `harness tiny-model DIR`).",
    ),
    click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size."),
    click.option(
        "--profile",
        "profiles",
        multiple=True,
        help="Profiles composed left to right: names (default, debug, trace, vlm-safe, nccl-safe, "
        "net, eager) or YAML paths; comma-separated or repeated. [default: default]",
    ),
    click.option(
        "--runtime",
        type=click.Choice(["local", "docker"]),
        default="local",
        show_default=True,
        help="local: a process group here; docker: a container.",
    ),
    click.option(
        "--host", default="127.0.0.1", show_default=True, help="Address the server binds."
    ),
    click.option("--port", type=int, default=8000, show_default=True, help="Server port."),
    click.option(
        "--image", default=None, help="Container image (docker runtime; default per engine)."
    ),
    click.option(
        "--engine-arg",
        "engine_args",
        multiple=True,
        help="Argument passed straight to the engine (repeatable; shell-split: "
        "--engine-arg '--max-model-len 512').",
    ),
    click.option(
        "--fault",
        "faults",
        multiple=True,
        help="Fault for --engine sim, e.g. stall:p=0.01,after=5 (repeatable).",
    ),
    click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Plan for GPUs or the CPU backend (auto: detect NVIDIA GPUs here).",
    ),
    click.option("--gpus", default=None, help="Docker GPUs: all, a count, or ids like 0,1."),
    click.option(
        "--net-iface",
        default=None,
        help="Interface for the net profile (default: detected); with --nodes also per node: "
        "eth0,node2=ib0.",
    ),
    click.option(
        "--host-ip",
        default=None,
        help="IP for the net profile (default: detected); with --nodes also per node: "
        "node2=10.0.0.12.",
    ),
    click.option(
        "--nodes",
        type=int,
        default=1,
        show_default=True,
        help="Machines the TP ranks span (vLLM's multi-node launch; needs --node-hosts).",
    ),
    click.option(
        "--node-hosts",
        default=None,
        metavar="H1,H2",
        help="With --nodes: the nodes as ssh destinations, the head first (harness starts the "
        "engine on each over ssh; ~/.ssh/config applies).",
    ),
    click.option(
        "--master-port",
        type=int,
        default=DEFAULT_MASTER_PORT,
        show_default=True,
        help="With --nodes: the head's torch.distributed port (vLLM --master-port).",
    ),
    click.option(
        "--fetch",
        is_flag=True,
        help="A hub id without a completed local copy is downloaded first (harness fetch); "
        "without it such a plan is refused by every command that starts a server.",
    ),
]


def plan_options(func: F) -> F:
    """Decorate a click command with every plan option."""
    for option in reversed(_PLAN_OPTIONS):
        func = option(func)
    return func


def _parse_gpus(value: str | None) -> str | int | list[int] | None:
    if value is None:
        return None
    if value == "all":
        return "all"
    if value.isdigit():
        return int(value)
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter("use all, a count, or ids like 0,1", param_hint="--gpus") from None


def build_spec(
    options: dict[str, Any],
    *,
    runs_dir: str | None,
    startup_timeout: float | None = None,
    stall_after: float | None = None,
    on_hang: str | None = None,
    watch: bool | None = None,
    run_id: str | None = None,
    for_start: bool = True,
) -> LaunchSpec:
    """Detect host facts and plan: the one path from command-line options to a LaunchSpec.
    ``run_id`` names the run (default: a new id from the time, engine and TP). The model's copy
    is chosen here (:mod:`harness.modelcopies`): a hub id's local copy (fetched with
    ``--fetch``; refused without one when ``for_start``), a matching pre-sharded copy."""
    source = modelcopies.resolve_source(
        options["model"], options["engine"], fetch=options.get("fetch", False), for_start=for_start
    )
    model, is_local = source.model, source.is_local
    # The simulated engine reads no config.json; a hub id has none here to check TP against.
    model_facts = hostfacts.model_facts(model) if is_local and options["engine"] != "sim" else None
    node_count = int(options.get("nodes") or 1)
    hosts = [h.strip() for h in (options.get("node_hosts") or "").split(",") if h.strip()]
    check_layout(options["tp"], node_count, hosts)
    nodes: list[NodeFacts] = []
    ifaces: dict[str, str] = {}
    addresses: dict[str, str] = {}
    if node_count > 1 and for_start and options["runtime"] == "docker":
        raise PlanError(
            "serve --nodes runs the engine on each node as a process over ssh; containers on "
            "several hosts are started per host",
            hint="harness plan ... --runtime docker --format compose (one service per node: "
            "`docker compose up <service>` on that node), or serve without --runtime docker",
        )
    if node_count > 1:
        ifaces = parse_per_node("--net-iface", _given(options["net_iface"]), hosts)
        addresses = parse_per_node("--host-ip", _given(options["host_ip"]), hosts)
        nodes = nodefacts.gather(hosts, engine_module="vllm" if for_start else None)
        facts = _hosts_facts(nodes, options["device"])
    else:
        facts = hostfacts.detect(
            device=options["device"], iface=options["net_iface"], host_ip=options["host_ip"]
        )
    # Every plan starts from the production-like base; listed profiles go on top of it.
    profiles = split_profile_list(options["profiles"])
    if "default" not in profiles:
        profiles.insert(0, "default")
    request = PlanRequest(
        engine=options["engine"],
        model=model,
        run_id=run_id or new_run_id(f"{options['engine']}-tp{options['tp']}"),
        runs_root=str(runs_root(runs_dir)),
        tp=options["tp"],
        profiles=tuple(profiles),
        runtime=options["runtime"],
        host=options["host"],
        port=options["port"],
        image=options["image"],
        engine_args=tuple(options["engine_args"]),
        faults=tuple(options["faults"]),
        model_is_local_dir=is_local,
        startup_timeout_s=startup_timeout,
        stall_after_s=stall_after,
        on_hang=on_hang,  # type: ignore[arg-type]
        watch=watch,
        gpus=_parse_gpus(options["gpus"]),
        caller_env=dict(os.environ),
        model_facts=model_facts,
        served_name=source.served_name,
        model_notes=source.notes,
        nodes=tuple(nodes),
        node_ifaces=ifaces,
        node_addresses=addresses,
        master_port=int(options.get("master_port") or DEFAULT_MASTER_PORT),
    )
    spec = make_plan(request, facts)
    shard = modelcopies.choose_sharded(spec, facts)
    if shard.path or shard.notes:
        request = replace(
            request,
            sharded_copy=shard.path,
            served_name=shard.served_name or request.served_name,
            model_notes=request.model_notes + shard.notes,
        )
        spec = make_plan(request, facts)
    return spec


def _given(value: str | None) -> list[str]:
    return [value] if value else []


def _hosts_facts(nodes: list[NodeFacts], device: str) -> HostFacts:
    """What the planner's host checks count for a multi-node plan: the device every node has,
    and cores and GPUs as the nodes' smallest share times their number (every node runs the
    same number of ranks)."""
    gpus = min(n.gpus for n in nodes)
    chosen = ("cuda" if gpus > 0 else "cpu") if device == "auto" else device
    return HostFacts(
        device="cuda" if chosen == "cuda" else "cpu",
        cpu_count=min(len(n.cpus) or 1 for n in nodes) * len(nodes),
        gpu_count=gpus * len(nodes),
        python=nodes[0].python,
    )


PLAN_OPTION_NAMES = (
    "engine",
    "model",
    "tp",
    "profiles",
    "runtime",
    "host",
    "port",
    "image",
    "engine_args",
    "faults",
    "device",
    "gpus",
    "net_iface",
    "host_ip",
    "fetch",
    "nodes",
    "node_hosts",
    "master_port",
)


def pop_plan_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Split the plan options out of a command's keyword arguments."""
    return {name: kwargs.pop(name) for name in PLAN_OPTION_NAMES}
