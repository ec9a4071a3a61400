"""Beyond one machine, for real: two nodes of the test cluster (containers of the vLLM CPU image
with their own IP and sshd on an internal Docker network), reached over real ssh and pdsh.

- ``harness serve --nodes 2 --tp 2`` starts vLLM's multi-node launch (the head's API server and
  TP rank 0 on node1, a headless node with rank 1 on node2) and the server answers a chat
  completion; ``harness dump --hosts`` merges both nodes' processes; with node2 frozen
  (``docker pause``) the detached watcher's stall incident and ``harness dump`` (through pdsh
  and through one ssh per host) report node2 and keep node1's dumps; ``harness down`` leaves no
  engine process on either node and no container.
- A wrong ``GLOO_SOCKET_IFNAME`` on node2 (its second NIC, on a network node1 cannot reach):
  ``harness doctor --nodes`` FAILs it before launch; ``harness serve`` hangs in Gloo's pair
  setup and the startup incident names the network cause and holds both nodes' stacks.

One real vLLM start per test (the machine has 2 cores: one per node).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, have_module, require
from tests.integration.testcluster import Cluster, cluster

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.slow]

STARTUP_TIMEOUT = "300"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Cluster]:
    """Two nodes sharing the tiny model (read-only, same path); node2 has a second NIC."""
    require(have_module("vllm"), "vLLM's CPU build (make install)")
    with cluster(
        tmp_path_factory.mktemp("cluster"), shares=[tiny_model_dir], extra_nic=["node2"]
    ) as made:
        yield made
        leftovers = made.leftovers()
    made.down()
    assert made.leftovers() == [] and leftovers, "the cluster was not there, or is still there"


def serve_args(model: Path, port: int, *extra: str, startup: str = STARTUP_TIMEOUT) -> list[str]:
    return [
        "serve",
        "--model",
        str(model),
        "--tp",
        "2",
        "--nodes",
        "2",
        "--node-hosts",
        "node1,node2",
        "--profile",
        "eager",
        "--port",
        str(port),
        "--master-port",
        str(free_port()),
        "--startup-timeout",
        startup,
        *extra,
    ]


def only_run(runs: Path) -> Path:
    """The one server run (not a doctor's or a dump's run directory)."""
    found = [p for p in runs.iterdir() if re.fullmatch(r"\d{8}-\d{6}-vllm-tp2-\w+", p.name)]
    assert len(found) == 1, found
    return found[0]


def bundle_of(out: str) -> Path:
    return Path(out.strip().splitlines()[-1])


def test_two_node_tp2_serves_dumps_across_nodes_and_leaves_nothing(
    nodes: Cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    port = free_port()
    try:
        started = time.monotonic()
        detached = ["--detach", "--stall-after", "15"]
        res = nodes.harness(*serve_args(tiny_model_dir, port, *detached), runs=runs, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        ready_s = time.monotonic() - started
        run = only_run(runs)
        spec = json.loads((run / "launch_spec.json").read_text())
        head = spec["nodes"][0]
        assert [n["host"] for n in spec["nodes"]] == ["node1", "node2"]
        assert spec["base_url"] == f"http://{nodes.nodes['node1']}:{port}"
        assert head["env"]["GLOO_SOCKET_IFNAME"] == "eth0"
        assert spec["nodes"][1]["env"]["VLLM_HOST_IP"] == nodes.nodes["node2"]

        # The two-node TP=2 server answers (over the internal network, from this host).
        reply = httpx.post(
            f"{spec['base_url']}/v1/chat/completions",
            json={
                "model": spec["served_model_name"],
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8,
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 8
        # TP rank 1 runs on node2 (the headless node), rank 0 on node1.
        assert any("VLLM::Worker_TP0" in p for p in nodes.engine_processes("node1"))
        assert any("VLLM::Worker_TP1" in p for p in nodes.engine_processes("node2"))
        listed = nodes.harness("ps", runs=runs)
        assert run.name in listed.stdout and "nodes node1, node2" in listed.stdout

        # harness dump --hosts over real ssh, through pdsh (installed): both nodes merged.
        res = nodes.harness("dump", "--hosts", "node1,node2", runs=runs, timeout=300)
        assert res.returncode == 0, res.stderr
        incident = json.loads((bundle_of(res.stdout) / "incident.json").read_text())
        roles = {(p["host"], p["role"]) for p in incident["processes"]}
        assert {("node1", "Worker_TP0"), ("node1", "EngineCore"), ("node1", "APIServer")} <= roles
        assert {("node2", "Worker_TP1"), ("node2", "Headless")} <= roles
        lines = (bundle_of(res.stdout) / "processes.txt").read_text().splitlines()[1:]
        assert lines and all(line.split()[0] in ("node1", "node2") for line in lines)

        # node2 frozen mid-serving: the detached watcher's canary stalls (TP rank 0 waits for
        # rank 1) and its incident, captured over ssh, keeps node1's stacks and names node2.
        # The first requests compile kernels on the CPU (g++): the canary may stall on them and
        # file an incident first; the watcher re-arms once tokens flow again.
        filed = _armed(run, 120)
        nodes.docker("pause", nodes.container("node2"))
        watched = _wait_for(run / "incidents" / str(filed + 1) / "summary.md", 150)
        incident = json.loads((watched.parent / "incident.json").read_text())
        assert incident["kind"] == "engine-stall", incident["detail"]
        assert {p["host"] for p in incident["processes"]} == {"node1"}
        assert any(n.startswith("node node2: no answer") for n in incident["notes"])
        tp0 = next(p for p in incident["processes"] if p["role"] == "Worker_TP0")
        assert tp0["wait"] and (watched.parent / f"stacks/node1-{tp0['pid']}.txt").exists()
        # ... and harness dump, too (pdsh, then one ssh per host).
        for pdsh in (True, False):
            res = nodes.harness(
                "dump", "--hosts", "node1,node2", "--host-timeout", "25", runs=runs,
                timeout=300, pdsh=pdsh,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            assert "warning: node node2:" in res.stderr, res.stderr
            bundle = bundle_of(res.stdout)
            incident = json.loads((bundle / "incident.json").read_text())
            assert {p["host"] for p in incident["processes"]} == {"node1"}
            assert any(n.startswith("node node2: no answer") for n in incident["notes"])
            tp0 = next(p for p in incident["processes"] if p["role"] == "Worker_TP0")
            stack = (bundle / f"stacks/node1-{tp0['pid']}.txt").read_text()
            assert stack.count("# node node1, dump ") == 2 and "Thread " in stack, stack[:500]
        nodes.docker("unpause", nodes.container("node2"))

        # harness down: nothing of the server left on either node, no ssh client here.
        res = nodes.harness("down", run.name, runs=runs, timeout=300)
        assert res.returncode == 0 and f"stopped {run.name}" in res.stdout, res.stderr
        for node in ("node1", "node2"):
            assert nodes.engine_processes(node) == [], node
        state = json.loads((run / "state.json").read_text())
        assert state["status"] == "stopped"
        print(f"\nmeasured: two-node TP=2 healthy after {ready_s:.1f} s (serve --detach)")
    finally:
        if _paused(nodes, "node2"):
            nodes.docker("unpause", nodes.container("node2"))
        nodes.harness("down", "--all", runs=runs, timeout=300)
    assert nodes.harness("ps", runs=runs).stdout.strip() == "no live servers"


def _wait_for(path: Path, deadline_s: float) -> Path:
    """``path`` once it exists (the watcher writes summary.md last)."""
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert time.monotonic() < end, f"no {path} within {deadline_s} s"
        time.sleep(0.5)
    return path


def _armed(run: Path, deadline_s: float) -> int:
    """The incidents the run's watcher filed so far, once it is armed again (it re-arms after
    each incident when tokens flow: "server recovered" in watchdog.log)."""
    end = time.monotonic() + deadline_s
    while True:
        filed = len(list((run / "incidents").glob("*/summary.md")))
        log = (run / "watchdog.log").read_text() if (run / "watchdog.log").exists() else ""
        if log.count("server recovered") >= filed:
            return filed
        assert time.monotonic() < end, f"the watcher did not re-arm within {deadline_s} s: {log}"
        time.sleep(0.5)


def _paused(nodes: Cluster, node: str) -> bool:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Paused}}", nodes.container(node)],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() == "true"


def test_a_wrong_gloo_interface_on_one_node_is_named_before_and_at_the_hang(
    nodes: Cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    # node2's Gloo (and NCCL) on eth1, a network node1 cannot reach; its VLLM_HOST_IP stays
    # right: only the socket interface is wrong, as in the field document.
    wrong = ["--net-iface", "node2=eth1", "--host-ip", f"node2={nodes.nodes['node2']}"]
    plan_opts = ["--model", str(tiny_model_dir), "--tp", "2", "--nodes", "2"]
    plan_opts += ["--node-hosts", "node1,node2", *wrong]

    # Before launch: doctor names it (the fast check; the distributed one is in the unit tests'
    # scripts and the healthy case below).
    res = nodes.harness("doctor", *plan_opts, "--no-distributed", runs=runs, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL nodes: network: node node2: GLOO_SOCKET_IFNAME=eth1" in res.stdout

    port = free_port()
    try:
        res = nodes.harness(
            *serve_args(tiny_model_dir, port, *wrong, "--on-hang", "stop", startup="120"),
            runs=runs,
            timeout=900,
        )
        assert res.returncode == 1, res.stderr[-3000:]
        assert "not healthy after 120 s" in res.stderr + res.stdout
        run = only_run(runs)
        bundle = run / "incidents" / "1"
        summary = (bundle / "summary.md").read_text().splitlines()
        assert summary[0].startswith("startup-hang (health-deadline)")
        assert summary[2].startswith("likely: network-wrong-address"), summary[:3]
        incident = json.loads((bundle / "incident.json").read_text())
        evidence = incident["signatures"][0]["evidence"]
        assert any("node node2: GLOO_SOCKET_IFNAME=eth1" in e for e in evidence), evidence
        assert "gloo-connect-hang" in [s["name"] for s in incident["signatures"]]
        # Both nodes' stacks: each node's rank waits for Gloo's pair connection.
        workers = [p for p in incident["processes"] if p["role"].startswith("Worker")]
        assert {p["host"] for p in workers} == {"node1", "node2"}
        for p in workers:
            assert "waitUntilConnected" in (p["wait"] or ""), p
            assert (bundle / f"stacks/{p['host']}-{p['pid']}.txt").exists()
        assert (bundle / "server.log.tail").stat().st_size > 0
        assert (bundle / "server.node2.log.tail").stat().st_size > 0
        # --on-hang stop: nothing left on the nodes.
        for node in ("node1", "node2"):
            assert nodes.engine_processes(node) == [], node
    finally:
        nodes.harness("down", "--all", runs=runs, timeout=300)


def test_doctor_runs_the_distributed_test_across_the_nodes(
    nodes: Cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Gloo rendezvous, all_reduce and barrier with one rank per node, each started over ssh
    # with its node's planned network variables (no vLLM server).
    opts = ["--model", str(tiny_model_dir), "--tp", "2", "--nodes", "2"]
    opts += ["--node-hosts", "node1,node2"]
    res = nodes.harness(
        "doctor", *opts, "--dist-timeout", "15", runs=tmp_path / "runs", timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS nodes: network: 2 nodes: node1" in res.stdout
    assert "PASS distributed: gloo: all_reduce + barrier over 2 ranks" in res.stdout
    # node2's Gloo on its second NIC: both ranks hang in Gloo's pair setup until the timeout.
    wrong = ["--net-iface", "node2=eth1", "--host-ip", f"node2={nodes.nodes['node2']}"]
    res = nodes.harness(
        "doctor", *opts, *wrong, "--dist-timeout", "5", runs=tmp_path / "runs", timeout=300
    )
    assert res.returncode == 1, res.stdout + res.stderr
    failed = next(ln for ln in res.stdout.splitlines() if ln.startswith("FAIL distributed: gloo"))
    # Gloo gives up connecting (Connect timeout) or the rank is stopped at the deadline.
    assert re.search(r"rank 1 on node2 (failed at gloo-init|hung after rendezvous)", failed)
    assert "GLOO_SOCKET_IFNAME=eth1 on rank 1" in failed
