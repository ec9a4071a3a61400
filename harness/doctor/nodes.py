"""``harness doctor --nodes N --node-hosts h1,h2``: before a multi-node launch, what keeps the
nodes' ranks from meeting (I/O over ssh; the judging is pure).

Two checks. ``nodes: network`` compares every node's planned network settings
(``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``, ``VLLM_HOST_IP`` of the ``net`` profile, per
node) with the node's own facts (:func:`harness.nodeplan.network_problems`): an interface the
node does not have, loopback, an address that is not the node's, an interface on none of the
head's networks (the wrong NIC of a multi-homed node). ``distributed: gloo`` is the sanity test
of one machine (:mod:`harness.doctor.sanity`: rendezvous at the head's ``--master-port``, Gloo
``init_process_group``, ``all_reduce``, ``barrier``, every step with a timeout) with one rank
per node, each started over ssh with that node's planned environment: a node whose Gloo
interface the others cannot reach is a FAIL naming the rank and its node within the timeout,
where the server would hang.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.doctor.checks import Check, judge_distributed
from harness.nodefacts import CONNECT_TIMEOUT_S, ssh_argv
from harness.nodeplan import network_problems
from harness.spec import LaunchSpec, NodeSpec

#: The variables of a node's plan that the distributed test runs with.
NETWORK_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "VLLM_HOST_IP", "TP_SOCKET_IFNAME")
NODES_NET_FIX = (
    "pin each node's interface: --net-iface IFACE for all, --net-iface HOST=IFACE (and "
    "--host-ip HOST=IP) for one node; every node's Gloo/NCCL interface must be on a network "
    "the head reaches"
)
_MARK = "#harness-doctor-"


def judge_nodes_network(spec: LaunchSpec) -> Check:
    """The nodes' network settings against their facts (pure)."""
    problems = network_problems(spec.nodes)
    if problems:
        return Check("nodes: network", "FAIL", "; ".join(problems), NODES_NET_FIX)
    summary = ", ".join(
        f"{n.host} {n.address} on {n.iface or '?'}"
        + (f" (Gloo {n.env['GLOO_SOCKET_IFNAME']})" if n.env.get("GLOO_SOCKET_IFNAME") else "")
        for n in spec.nodes
    )
    return Check("nodes: network", "PASS", f"{len(spec.nodes)} nodes: {summary}")


def rank_script(
    node: NodeSpec, sanity: str, *, world: int, head: str, port: int, timeout_s: float
) -> str:
    """What ``sh -s`` runs on ``node``: the sanity script, one rank with the node's network
    variables, then its log and step records between markers."""
    env = {k: v for k, v in node.env.items() if k in NETWORK_VARIABLES}
    env.update(RANK=str(node.rank), WORLD_SIZE=str(world), MASTER_ADDR=head, MASTER_PORT=str(port))
    python = shlex.quote(node.argv[0]) if node.argv else "python3"
    limit = int(timeout_s + 25)  # + importing torch and the rendezvous
    lines = [
        "d=$(mktemp -d /tmp/harness-doctor.XXXXXX)",
        "cat > \"$d/sanity.py\" <<'HARNESS_SANITY_EOF'",
        sanity.rstrip("\n"),
        "HARNESS_SANITY_EOF",
        *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
        f'timeout {limit} {python} "$d/sanity.py" rank --out-dir "$d" --addr {shlex.quote(head)} '
        f'--port {port} --timeout {timeout_s:g} > "$d/rank.log" 2>&1',
        f'echo "{_MARK}exit $?"',
        f'echo "{_MARK}log"; cat "$d/rank.log"',
        f'echo "{_MARK}steps"; cat "$d/rank{node.rank}.jsonl" 2>/dev/null',
        f'echo "{_MARK}end"; rm -rf "$d"',
    ]
    return "\n".join(lines) + "\n"


def parse_rank_output(text: str) -> tuple[int | None, str, list[dict[str, Any]], bool]:
    """(exit code, log, step records, whether the output ended) of one node's rank."""
    code: int | None = None
    section = ""
    log: list[str] = []
    steps: list[dict[str, Any]] = []
    ended = False
    for line in text.splitlines():
        if line.startswith(_MARK):
            word, _, rest = line[len(_MARK) :].partition(" ")
            section = word
            if word == "exit" and rest.strip().lstrip("-").isdigit():
                code = int(rest)
            ended = ended or word == "end"
            continue
        if section == "log":
            log.append(line)
        elif section == "steps":
            try:
                steps.append(json.loads(line))
            except ValueError:
                continue
    return code, "\n".join(log), steps, ended


def run_across_nodes(
    spec: LaunchSpec, out_dir: Path, *, timeout_s: float
) -> tuple[dict[str, Any] | None, str | None]:
    """The sanity test with one rank per node, in the summary shape of
    :func:`harness.doctor.sanity.launch` (ranks named ``rank R on HOST`` in the logs)."""
    from harness.doctor import sanity

    sanity_text = Path(str(sanity.__file__)).read_text()
    head = spec.nodes[0].address
    port = _master_port(spec)
    dist_dir = out_dir / "distributed"
    dist_dir.mkdir(parents=True, exist_ok=True)
    budget = timeout_s + sanity.STARTUP_ALLOWANCE_S + CONNECT_TIMEOUT_S + 30
    started = time.monotonic()

    def one(node: NodeSpec) -> dict[str, Any]:
        script = rank_script(
            node, sanity_text, world=len(spec.nodes), head=head, port=port, timeout_s=timeout_s
        )
        log_path = dist_dir / f"rank{node.rank}.{node.host}.log"
        try:
            done = subprocess.run(
                ssh_argv(node.host, "sh -s"),
                input=script,
                capture_output=True,
                text=True,
                timeout=budget,
            )
            output, ssh_code = done.stdout, done.returncode
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else ""
            ssh_code = None
        code, log, steps, ended = parse_rank_output(output)
        log_path.write_text(log or output)
        return {
            "rank": node.rank,
            "host": node.host,
            "started": bool(steps),
            "exit_code": code if code is not None else ssh_code,
            # timeout(1) stopped the rank (124), or the node's ssh never came back.
            "killed_at_deadline": code == 124 or not ended,
            "env": {k: v for k, v in node.env.items() if k == "GLOO_SOCKET_IFNAME"},
            "steps": steps,
            "log": str(log_path),
        }

    with cf.ThreadPoolExecutor(max_workers=len(spec.nodes)) as pool:
        ranks = list(pool.map(one, spec.nodes))
    summary = {
        "nproc": len(spec.nodes),
        "addr": head,
        "port": port,
        "timeout_s": timeout_s,
        "elapsed_s": round(time.monotonic() - started, 2),
        "ranks": ranks,
    }
    (dist_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary, None


def _master_port(spec: LaunchSpec) -> int:
    argv = spec.nodes[0].argv
    if "--master-port" in argv:
        return int(argv[argv.index("--master-port") + 1])
    return 29501


def name_nodes(checks: list[Check], nodes: list[NodeSpec]) -> list[Check]:
    """``rank 1`` -> ``rank 1 on node2`` in the distributed checks' words."""
    out = []
    for check in checks:
        detail = check.detail
        for node in nodes:
            detail = detail.replace(f"rank {node.rank} ", f"rank {node.rank} on {node.host} ")
        out.append(Check(check.name, check.status, detail, check.fix))
    return out


def run_nodes_doctor(
    spec: LaunchSpec,
    out_dir: Path,
    *,
    distributed: bool,
    dist_timeout_s: float,
    on_check: Callable[[Check], None] | None = None,
) -> tuple[list[Check], dict[str, Any] | None]:
    """Every check of a multi-node plan; ``on_check`` sees each as soon as it is judged."""
    made: list[Check] = []

    def add(*new: Check) -> None:
        for check in new:
            made.append(check)
            if on_check is not None:
                on_check(check)

    add(judge_nodes_network(spec))
    summary: dict[str, Any] | None = None
    if distributed:
        summary, error = run_across_nodes(spec, out_dir, timeout_s=dist_timeout_s)
        gloo = judge_distributed(summary, error=error)[0]
        fix = NODES_NET_FIX + f"; rank logs: {out_dir / 'distributed'}"
        gloo = Check(gloo.name, gloo.status, gloo.detail, fix if gloo.fix else None)
        add(*name_nodes([gloo], spec.nodes))
    return made, summary
