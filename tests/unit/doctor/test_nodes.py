"""``harness doctor --nodes`` (pure parts): the nodes' network check, a node's rank output, and
ranks named after their nodes."""

from __future__ import annotations

import json

from harness.doctor.checks import Check
from harness.doctor.nodes import judge_nodes_network, name_nodes, parse_rank_output, rank_script
from tests.unit.test_nodeplan import plan


def test_the_network_check_passes_a_clean_plan_and_fails_a_wrong_interface() -> None:
    ok = judge_nodes_network(plan())
    assert ok.status == "PASS"
    assert (
        ok.detail
        == "2 nodes: node1 172.25.0.2 on eth0 (Gloo eth0), node2 172.25.0.3 on eth0 (Gloo eth0)"
    )
    bad = judge_nodes_network(plan(node_ifaces={"node2": "lo"}))
    assert bad.status == "FAIL" and bad.fix and "--net-iface HOST=IFACE" in bad.fix
    assert bad.detail.startswith("node node2: GLOO_SOCKET_IFNAME=lo is the loopback interface")


def test_a_rank_script_carries_only_the_network_variables() -> None:
    spec = plan(engine_args=("--api-key sk-never-there",))
    node = spec.nodes[1]
    script = rank_script(node, "print(1)\n", world=2, head="172.25.0.2", port=29501, timeout_s=20)
    assert "export GLOO_SOCKET_IFNAME=eth0" in script and "export RANK=1" in script
    assert "export MASTER_ADDR=172.25.0.2" in script and "sk-never-there" not in script
    assert "timeout 45 /opt/venv/bin/python3" in script


def test_a_rank_output_is_read_between_markers() -> None:
    steps = [{"step": "rendezvous", "status": "ok", "seconds": 0.1}]
    text = "\n".join(
        [
            "#harness-doctor-exit 124",
            "#harness-doctor-log",
            "torch says hello",
            "#harness-doctor-steps",
            json.dumps(steps[0]),
            '{"step": "gloo-init", "sta',  # torn by the kill
            "#harness-doctor-end",
        ]
    )
    assert parse_rank_output(text) == (124, "torch says hello", steps, True)
    assert parse_rank_output("ssh: connect to host n2 port 22: Connection refused") == (
        None,
        "",
        [],
        False,
    )


def test_ranks_are_named_after_their_nodes() -> None:
    spec = plan()
    check = Check("distributed: gloo", "FAIL", "nproc 2: rank 1 hung after rendezvous (x)", "fix")
    (named,) = name_nodes([check], spec.nodes)
    assert named.detail == "nproc 2: rank 1 on node2 hung after rendezvous (x)"
