"""The pure parts of a multi-node plan (``--nodes N --node-hosts h1,h2``): each node's facts,
which interface and address each node's collectives use, and the checks that say before
anything starts why a layout cannot work.

Nodes are named by the user as ssh destinations (``--node-hosts``, the first is the head);
:mod:`harness.nodefacts` asks each node for its facts over ssh and :func:`harness.plan.make_plan`
turns them into one :class:`~harness.spec.NodeSpec` per node (:func:`plan_nodes`). Nothing here
does I/O.

Which address a node uses: by default the one harness's ssh reached it on (``SSH_CONNECTION``
on the node: the route the other nodes and harness share), with the interface that holds it.
``--net-iface [HOST=]IFACE`` and ``--host-ip [HOST=]IP`` override it for every node or for one;
the ``net`` profile (always part of a multi-node plan) then pins ``VLLM_HOST_IP``,
``GLOO_SOCKET_IFNAME`` and ``NCCL_SOCKET_IFNAME`` per node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from harness.containerplan import ENGINE_NAMES
from harness.errors import PlanError
from harness.profiles import ComposedProfile, compose
from harness.spec import ContainerSpec, NodeSpec

if TYPE_CHECKING:
    from harness.engines.base import EngineAdapter, LaunchRequest
    from harness.plan import PlanRequest

#: vLLM's default ``--master-port`` (the head's torch.distributed store).
DEFAULT_MASTER_PORT = 29501
#: What a multi-node plan always composes (the network pinned per node).
NET_PROFILE = "net"


@dataclass(frozen=True)
class NodeFacts:
    """What the planner needs to know about one node (gathered over ssh)."""

    host: str
    hostname: str = ""
    #: The node's address harness's ssh reached (the server side of ``SSH_CONNECTION``).
    reached_address: str | None = None
    #: Interface name -> its IPv4 address with prefix length, ``"10.0.0.5/24"`` (None: none).
    interfaces: Mapping[str, str | None] = field(default_factory=dict)
    #: The cores this node lets its processes run on.
    cpus: tuple[int, ...] = ()
    gpus: int = 0
    #: The engine's interpreter on the node (absolute, as found there).
    python: str = "python3"


@dataclass(frozen=True)
class NodeNetwork:
    """The interface and address one node's collectives use."""

    iface: str | None
    address: str


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_interface(address).ip.is_loopback
    except ValueError:
        return address == "localhost"


def iface_ip(value: str | None) -> str | None:
    """``"10.0.0.5/24"`` (or a bare address) -> ``"10.0.0.5"``."""
    return value.split("/", 1)[0] if value else None


def _network(value: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not value or "/" not in value:
        return None
    try:
        return ipaddress.ip_interface(value).network
    except ValueError:
        return None


def parse_per_node(option: str, values: Sequence[str], hosts: Sequence[str]) -> dict[str, str]:
    """``--net-iface eth0`` / ``--net-iface node2=lo`` (comma lists, repeatable) -> a value
    per host; ``""`` keys a value for every node. Unknown hosts are bad input."""
    out: dict[str, str] = {}
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            host, sep, rest = item.rpartition("=")
            if not sep:
                out[""] = item
                continue
            if not rest:
                raise PlanError(f"{option} {item!r}: give HOST=VALUE or VALUE")
            if hosts and host not in hosts:
                raise PlanError(
                    f"{option} {item!r} names {host!r}, which is not one of --node-hosts "
                    f"({', '.join(hosts)})"
                )
            out[host] = rest
    return out


def node_network(facts: NodeFacts, iface: str | None, address: str | None) -> NodeNetwork:
    """Choose a node's interface and address (see the module docstring). Raises
    :class:`PlanError` for an interface the node does not have or one without IPv4."""
    names = ", ".join(sorted(facts.interfaces)) or "none"
    if iface is not None:
        if iface not in facts.interfaces:
            raise PlanError(
                f"--net-iface {facts.host}={iface}: {facts.host} has no interface {iface} "
                f"(it has: {names})"
            )
        chosen = address or iface_ip(facts.interfaces[iface])
        if not chosen:
            raise PlanError(
                f"--net-iface {facts.host}={iface}: {iface} has no IPv4 address on {facts.host}",
                hint=f"give the address too: --host-ip {facts.host}=IP",
            )
        return NodeNetwork(iface, chosen)
    chosen = address or facts.reached_address
    if not chosen or is_loopback(chosen):
        # Reached over loopback (harness runs on the node itself): the first other address.
        chosen = next(
            (iface_ip(v) for v in facts.interfaces.values() if v and not is_loopback(v)), chosen
        )
    if not chosen:
        raise PlanError(
            f"{facts.host} has no IPv4 address the other nodes could reach (interfaces: {names})",
            hint=f"name it: --host-ip {facts.host}=IP or --net-iface {facts.host}=IFACE",
        )
    holder = next(
        (name for name, value in facts.interfaces.items() if iface_ip(value) == chosen), None
    )
    return NodeNetwork(holder, chosen)


def check_layout(tp: int, nodes: int, hosts: Sequence[str]) -> None:
    """Bad input before any node is asked: ``--nodes`` without (enough) hosts, a TP that does
    not split evenly over the nodes, a host named twice."""
    if nodes < 1:
        raise PlanError(f"--nodes must be at least 1 (got {nodes})")
    if nodes == 1:
        if hosts:
            raise PlanError(
                "--node-hosts needs --nodes N with N > 1 (one node is this machine)",
                hint=f"--nodes {len(hosts)} --node-hosts {','.join(hosts)}",
            )
        return
    if not hosts:
        raise PlanError(
            f"--nodes {nodes} needs the nodes: --node-hosts h1,h2 (ssh destinations; the first "
            "is the head)",
            hint="every node must be reachable with `ssh HOST true` without a prompt",
        )
    if len(hosts) != nodes:
        raise PlanError(f"--nodes {nodes} but --node-hosts names {len(hosts)}: {','.join(hosts)}")
    if len(set(hosts)) != len(hosts):
        raise PlanError(f"--node-hosts names a host twice: {','.join(hosts)}")
    if tp % nodes:
        valid = [n for n in range(2, tp + 1) if tp % n == 0]
        raise PlanError(
            f"--tp {tp} does not split over --nodes {nodes}: vLLM runs the same number of "
            f"ranks on every node (valid --nodes for --tp {tp}: "
            f"{', '.join(map(str, valid)) or 'none above 1'})"
        )


def _named_ifaces(var: str, value: str, interfaces: Mapping[str, str | None]) -> list[str]:
    """The interfaces a ``*_SOCKET_IFNAME`` value selects on a node. Gloo takes names (a comma
    list); NCCL takes prefixes, ``=name`` for an exact one and ``^prefix`` to exclude."""
    chosen: list[str] = []
    for item in (v for v in value.split(",") if v):
        if var == "NCCL_SOCKET_IFNAME" and item.startswith("^"):
            continue
        exact = var == "GLOO_SOCKET_IFNAME" or item.startswith("=")
        name = item.lstrip("=")
        chosen += [i for i in interfaces if (i == name if exact else i.startswith(name))]
    return chosen


def network_problems(nodes: Sequence[NodeSpec]) -> list[str]:
    """What, in each node's planned network settings, keeps the ranks of different nodes from
    reaching each other (one line per finding, naming the node and the variable): an interface
    the node does not have, a loopback interface or address, an address that is not the
    node's, and a node whose Gloo/NCCL interface or ``VLLM_HOST_IP`` is on none of the head's
    networks (the wrong NIC of a multi-homed node). Pure: the facts are in the NodeSpecs."""
    if len(nodes) < 2:
        return []
    head_nets = {n for v in nodes[0].interfaces.values() if (n := _network(v)) is not None}
    head_nets = {n for n in head_nets if not n.network_address.is_loopback}
    found: list[str] = []
    for node in nodes:
        where = f"node {node.host}"
        names = ", ".join(sorted(node.interfaces)) or "none"
        addresses = {iface_ip(v): v for v in node.interfaces.values() if v}
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            value = node.env.get(var)
            if not value:
                continue
            selected = _named_ifaces(var, value, node.interfaces)
            if not selected:
                found.append(f"{where}: {var}={value} names no interface there (it has {names})")
                continue
            for iface in selected:
                cidr = node.interfaces.get(iface)
                if cidr is None:
                    found.append(f"{where}: {var}={value}: {iface} has no IPv4 address")
                elif is_loopback(cidr):
                    found.append(
                        f"{where}: {var}={value} is the loopback interface ({iface_ip(cidr)}): "
                        "ranks on the other nodes cannot connect to it"
                    )
                elif node.rank > 0 and head_nets and _network(cidr) not in head_nets:
                    found.append(
                        f"{where}: {var}={value} ({cidr}) is on none of the head's networks "
                        f"({', '.join(sorted(map(str, head_nets)))}): the ranks there "
                        "announce an address the head's ranks cannot reach"
                    )
        host_ip = node.env.get("VLLM_HOST_IP")
        if host_ip and host_ip not in addresses:
            found.append(f"{where}: VLLM_HOST_IP={host_ip} is not an address of {node.host}")
        elif host_ip and is_loopback(host_ip):
            found.append(f"{where}: VLLM_HOST_IP={host_ip} is loopback")
        elif (
            host_ip
            and node.rank > 0
            and head_nets
            and _network(addresses[host_ip]) not in head_nets
        ):
            found.append(
                f"{where}: VLLM_HOST_IP={host_ip} is on none of the head's networks "
                f"({', '.join(sorted(map(str, head_nets)))})"
            )
    return found


def node_networks(request: PlanRequest) -> list[NodeNetwork]:
    """Each node's interface and address (empty on one machine)."""
    if len(request.nodes) < 2:
        return []
    return [
        node_network(
            facts,
            request.node_ifaces.get(facts.host) or request.node_ifaces.get(""),
            request.node_addresses.get(facts.host) or request.node_addresses.get(""),
        )
        for facts in request.nodes
    ]


def check_multi_node(request: PlanRequest, composed: ComposedProfile) -> None:
    """What a multi-node plan cannot take (bad input, before anything starts)."""
    if request.engine != "vllm":
        raise PlanError(
            f"--nodes is for vLLM (its multiprocessing backend's multi-node launch); "
            f"{ENGINE_NAMES.get(request.engine, request.engine)} runs on one machine here",
            hint="drop --nodes, or serve with --engine vllm",
        )
    backend = composed.args.get("--distributed-executor-backend")
    if backend not in (None, "mp"):
        raise PlanError(
            f"a profile sets --distributed-executor-backend {backend}; --nodes uses vLLM's "
            "multiprocessing backend (mp) on every node",
            hint="drop the setting from the profile",
        )
    if not 1 <= request.master_port <= 65535 or request.master_port == request.port:
        raise PlanError(
            f"--master-port must be a free port other than --port (got {request.master_port})"
        )
    network_mode = composed.container.network_mode or "host"
    if request.runtime == "docker" and network_mode != "host":
        raise PlanError(
            f"network_mode {network_mode}: containers of a multi-node plan use the host "
            "network (each node's own address is what the other nodes connect to)",
            hint="drop network_mode from the profile",
        )


def plan_nodes(
    request: PlanRequest,
    adapter: EngineAdapter,
    head_launch: LaunchRequest,
    profiles: list[str],
    head_variables: Mapping[str, str | None],
    networks: list[NodeNetwork],
    head_container: ContainerSpec | None,
    *,
    head_argv: list[str],
    head_env: dict[str, str],
) -> list[NodeSpec]:
    """One NodeSpec per node: the head's argv and environment as planned, and for every other
    node the same launch with its rank, its cores and the ``net`` profile composed with its own
    interface and address."""
    assert head_launch.node is not None
    nodes: list[NodeSpec] = []
    for rank, (facts, net) in enumerate(zip(request.nodes, networks, strict=True)):
        if rank == 0:
            argv, env, container = head_argv, head_env, head_container
        else:
            variables = {**head_variables, "iface": net.iface, "host_ip": net.address}
            composed = compose(profiles, request.engine, variables)
            node_launch = replace(
                head_launch,
                python="python3" if head_container is not None else facts.python,
                node=replace(head_launch.node, rank=rank, cpus=facts.cpus),
            )
            argv = adapter.argv(node_launch)
            env = {**adapter.env(node_launch), **composed.env}
            env.setdefault("PYTHONUNBUFFERED", "1")
            container = None
        if head_container is not None:
            name = f"{head_container.name}-node{rank}"
            labels = {
                **head_container.labels,
                "harness.node": facts.host,
                "harness.node_rank": str(rank),
            }
            container = head_container.model_copy(update={"name": name, "labels": labels})
        nodes.append(
            NodeSpec(
                rank=rank,
                role="head" if rank == 0 else "worker",
                host=facts.host,
                hostname=facts.hostname,
                address=net.address,
                iface=net.iface,
                interfaces=dict(facts.interfaces),
                reached_address=facts.reached_address,
                cpus=list(facts.cpus),
                argv=argv,
                env=env,
                container=container,
            )
        )
    return nodes
