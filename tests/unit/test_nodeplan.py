"""Multi-node planning (pure): the layout checks, each node's interface and address, each
node's argv and environment, and the network findings that name a wrong interface."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.engines.vllm import SERVE_PROGRAM
from harness.errors import PlanError
from harness.nodeplan import NodeFacts, check_layout, network_problems, node_network, parse_per_node
from harness.plan import HostFacts, ModelFacts, PlanRequest, make_plan
from harness.spec import LaunchSpec

NODE1 = NodeFacts(
    host="node1",
    hostname="node1",
    reached_address="172.25.0.2",
    interfaces={"lo": "127.0.0.1/8", "eth0": "172.25.0.2/16"},
    cpus=(0,),
    python="/opt/venv/bin/python3",
)
NODE2 = NodeFacts(
    host="node2",
    hostname="node2",
    reached_address="172.25.0.3",
    interfaces={"lo": "127.0.0.1/8", "eth0": "172.25.0.3/16", "eth1": "172.24.0.2/16"},
    cpus=(1,),
    python="/opt/venv/bin/python3",
)
HOST = HostFacts(device="cpu", cpu_count=2, python="/opt/venv/bin/python3")
TINY = ModelFacts(source="/m/config.json", num_attention_heads=4, num_kv_heads=2, vocab_size=1000)


def plan(**kw: Any) -> LaunchSpec:
    request: dict[str, Any] = {
        "engine": "vllm",
        "model": "/m",
        "run_id": "r1",
        "runs_root": "/runs",
        "tp": 2,
        "profiles": ("default", "eager"),
        "model_is_local_dir": True,
        "model_facts": TINY,
        "nodes": (NODE1, NODE2),
    }
    request.update(kw)
    return make_plan(PlanRequest(**request), kw.pop("host", HOST))


# ------------------------------------------------------------------------------ layout


@pytest.mark.parametrize(
    ("tp", "nodes", "hosts", "words"),
    [
        (2, 2, [], "--nodes 2 needs the nodes: --node-hosts h1,h2"),
        (2, 2, ["a"], "--nodes 2 but --node-hosts names 1: a"),
        (2, 2, ["a", "a"], "names a host twice"),
        (3, 2, ["a", "b"], "--tp 3 does not split over --nodes 2"),
        (2, 1, ["a"], "--node-hosts needs --nodes N with N > 1"),
        (2, 0, [], "--nodes must be at least 1"),
    ],
)
def test_bad_layouts_are_one_line_each(tp: int, nodes: int, hosts: list[str], words: str) -> None:
    with pytest.raises(PlanError) as err:
        check_layout(tp, nodes, hosts)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_tp_not_divisible_lists_the_node_counts_that_work() -> None:
    with pytest.raises(PlanError, match=r"valid --nodes for --tp 4: 2, 4"):
        check_layout(4, 3, ["a", "b", "c"])
    check_layout(4, 2, ["a", "b"])  # fine


def test_per_node_values() -> None:
    hosts = ["node1", "node2"]
    assert parse_per_node("--net-iface", ["eth0,node2=ib0"], hosts) == {"": "eth0", "node2": "ib0"}
    with pytest.raises(PlanError, match="names 'node9', which is not one of --node-hosts"):
        parse_per_node("--net-iface", ["node9=eth0"], hosts)
    with pytest.raises(PlanError, match="give HOST=VALUE or VALUE"):
        parse_per_node("--host-ip", ["node2="], hosts)


# ------------------------------------------------------------------- interface and address


def test_a_node_uses_the_address_ssh_reached_and_its_interface() -> None:
    net = node_network(NODE2, None, None)
    assert (net.iface, net.address) == ("eth0", "172.25.0.3")


def test_an_interface_override_takes_its_address() -> None:
    net = node_network(NODE2, "eth1", None)
    assert (net.iface, net.address) == ("eth1", "172.24.0.2")
    # ... unless the address is given too (only the interface variables change).
    net = node_network(NODE2, "eth1", "172.25.0.3")
    assert (net.iface, net.address) == ("eth1", "172.25.0.3")


def test_an_interface_the_node_lacks_is_bad_input_naming_its_interfaces() -> None:
    with pytest.raises(PlanError, match=r"node2 has no interface ib0 \(it has: eth0, eth1, lo\)"):
        node_network(NODE2, "ib0", None)
    bare = NodeFacts(host="n", interfaces={"eth0": None, "lo": "127.0.0.1/8"})
    with pytest.raises(PlanError, match="eth0 has no IPv4 address on n"):
        node_network(bare, "eth0", None)


def test_reached_over_loopback_falls_back_to_a_routable_address() -> None:
    local = NodeFacts(host="localhost", reached_address="127.0.0.1", interfaces=NODE1.interfaces)
    assert node_network(local, None, None).address == "172.25.0.2"


# ---------------------------------------------------------------------------- the plan


def test_each_node_gets_its_rank_its_cores_and_its_network() -> None:
    spec = plan()
    head, worker = spec.nodes
    assert spec.profiles == ["default", "net", "eager"]  # net always, per node
    assert (head.role, worker.role) == ("head", "worker")
    assert head.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert worker.argv[1:3] == ["-c", SERVE_PROGRAM] and "--headless" in worker.argv
    for node in (head, worker):
        argv = node.argv
        assert argv[argv.index("--nnodes") + 1] == "2"
        assert argv[argv.index("--node-rank") + 1] == str(node.rank)
        assert argv[argv.index("--master-addr") + 1] == "172.25.0.2"
        assert argv[argv.index("--master-port") + 1] == "29501"
        assert argv[argv.index("--distributed-executor-backend") + 1] == "mp"
        assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert head.env["VLLM_HOST_IP"] == "172.25.0.2" and worker.env["VLLM_HOST_IP"] == "172.25.0.3"
    assert head.env["GLOO_SOCKET_IFNAME"] == worker.env["NCCL_SOCKET_IFNAME"] == "eth0"
    # One rank per node, bound to the node's own core (node2's is core 1).
    assert (head.env["VLLM_CPU_OMP_THREADS_BIND"], worker.env["VLLM_CPU_OMP_THREADS_BIND"]) == (
        "0",
        "1",
    )
    # The head's API server listens on its own address (loopback would be unreachable).
    assert head.argv[head.argv.index("--host") + 1] == "172.25.0.2"
    assert spec.base_url == "http://172.25.0.2:8000" and spec.argv == head.argv
    assert spec.warnings == []
    assert [n["host"] for n in json.loads(spec.to_json())["nodes"]] == ["node1", "node2"]


def test_one_machine_has_no_nodes() -> None:
    spec = plan(nodes=())
    assert spec.nodes == [] and "--nnodes" not in spec.argv
    assert json.loads(spec.to_json())["nodes"] == []


def test_a_wrong_interface_on_one_node_is_warned_at_plan_time() -> None:
    spec = plan(node_ifaces={"node2": "eth1"}, node_addresses={"node2": "172.25.0.3"})
    assert spec.nodes[1].env["GLOO_SOCKET_IFNAME"] == "eth1"
    assert spec.nodes[1].env["VLLM_HOST_IP"] == "172.25.0.3"
    assert spec.nodes[0].env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert any("node node2: GLOO_SOCKET_IFNAME=eth1 (172.24.0.2/16)" in w for w in spec.warnings)


def test_too_many_ranks_per_node_names_the_nodes() -> None:
    host = HostFacts(device="cpu", cpu_count=2, python="python3")
    with pytest.raises(PlanError, match=r"needs 4 cores .* but the 2 nodes have 2 \(valid: 1, 2\)"):
        make_plan(
            PlanRequest(
                engine="vllm",
                model="/m",
                run_id="r",
                runs_root="/runs",
                tp=4,
                model_is_local_dir=True,
                nodes=(NODE1, NODE2),
            ),
            host,
        )


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"engine": "sim", "model": "sim", "model_facts": None}, "--nodes is for vLLM"),
        ({"engine_args": ("--nnodes 3",)}, "use --nodes and --node-hosts instead"),
        ({"engine_args": ("--headless",)}, "every node but the head runs headless"),
        ({"master_port": 8000}, "--master-port must be a free port other than --port"),
    ],
)
def test_what_a_multi_node_plan_refuses(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(PlanError, match=words):
        plan(**kw)


def test_docker_nodes_run_on_each_hosts_network() -> None:
    spec = plan(runtime="docker")
    names = [n.container.name for n in spec.nodes if n.container]
    assert names == ["harness-r1-node0", "harness-r1-node1"]
    worker = spec.nodes[1]
    assert worker.container is not None and worker.container.network_mode == "host"
    assert worker.container.labels["harness.node"] == "node2"
    assert worker.argv[0] == "python3"  # the image's interpreter, not the node's


# ------------------------------------------------------------------- network findings


def test_network_findings_name_the_node_and_the_variable() -> None:
    clean = plan()
    assert network_problems(clean.nodes) == []
    nodes = clean.nodes
    worker = nodes[1]

    def with_env(**env: str) -> list[str]:
        changed = worker.model_copy(update={"env": {**worker.env, **env}})
        return network_problems([nodes[0], changed])

    assert with_env(GLOO_SOCKET_IFNAME="lo") == [
        "node node2: GLOO_SOCKET_IFNAME=lo is the loopback interface (127.0.0.1): ranks on the "
        "other nodes cannot connect to it"
    ]
    assert (
        "names no interface there (it has eth0, eth1, lo)" in with_env(GLOO_SOCKET_IFNAME="ib0")[0]
    )
    assert (
        "is on none of the head's networks (172.25.0.0/16)"
        in with_env(NCCL_SOCKET_IFNAME="eth1")[0]
    )
    # NCCL's prefix and exclusion forms.
    assert with_env(NCCL_SOCKET_IFNAME="eth0") == with_env(NCCL_SOCKET_IFNAME="^docker,eth0") == []
    assert with_env(VLLM_HOST_IP="10.9.9.9") == [
        "node node2: VLLM_HOST_IP=10.9.9.9 is not an address of node2"
    ]
    assert with_env(VLLM_HOST_IP="127.0.0.1") == ["node node2: VLLM_HOST_IP=127.0.0.1 is loopback"]
