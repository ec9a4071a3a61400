"""Gather the facts a multi-node plan needs from every node, over ssh (I/O; the planning itself
is pure: :mod:`harness.nodeplan`, :func:`harness.plan.make_plan`).

Each node runs one small Python program under the engine's interpreter there (``python3`` on
the node's PATH, or ``$HARNESS_NODE_PYTHON``): its host name, the address harness's ssh reached
(``SSH_CONNECTION``), every interface's IPv4 address, the cores it may use, its GPUs, whether the
engine imports. ssh runs with ``BatchMode=yes`` (never a prompt) and a connect timeout, each
node has a deadline, and all nodes are asked in parallel. Options for ssh itself (user, port,
key, proxy) belong in ``~/.ssh/config``, as for ``harness dump --hosts``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import EnvironmentProblem
from harness.nodeplan import NodeFacts

#: The interpreter that runs the engine on the nodes (the same path on every node).
NODE_PYTHON_ENV = "HARNESS_NODE_PYTHON"
#: Seconds a node may take to answer (ssh connect included).
FACTS_TIMEOUT_S = 30.0
#: ssh's own connect timeout (seconds).
CONNECT_TIMEOUT_S = 10

_PROGRAM = r"""
import fcntl, glob, importlib.util, json, os, socket, struct, sys
def ipv4(name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("256s", name.encode()[:15])
        addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])
        mask = fcntl.ioctl(s.fileno(), 0x891B, req)[20:24]
        return addr + "/" + str(sum(bin(b).count("1") for b in mask))
    except OSError:
        return None
    finally:
        s.close()
conn = os.environ.get("SSH_CONNECTION", "").split()
print("#harness-facts " + json.dumps({
    "hostname": socket.gethostname(),
    "reached_address": conn[2] if len(conn) > 2 else None,
    "interfaces": {name: ipv4(name) for _i, name in socket.if_nameindex()},
    "cpus": sorted(os.sched_getaffinity(0)),
    "gpus": len(glob.glob("/dev/nvidia[0-9]*")),
    "python": sys.executable,
    "engine": {m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]},
}))
"""

_MARK = "#harness-facts "


def ssh_argv(host: str, command: str, *, connect_timeout_s: int = CONNECT_TIMEOUT_S) -> list[str]:
    """``ssh`` running ``command`` (a shell command line) on ``host``, never prompting."""
    return [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={connect_timeout_s}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        host,
        command,
    ]


def node_python() -> str:
    """The interpreter the engine runs under on every node."""
    return os.environ.get(NODE_PYTHON_ENV) or "python3"


@dataclass(frozen=True)
class _Answer:
    host: str
    facts: NodeFacts | None
    engine: dict[str, bool]
    error: str | None


def _ask(host: str, python: str, modules: Sequence[str], timeout_s: float) -> _Answer:
    command = shlex.join([python, "-c", _PROGRAM, *modules])
    try:
        done = subprocess.run(
            ssh_argv(host, command),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return _Answer(host, None, {}, f"no answer within {timeout_s:g} s")
    except OSError as exc:
        return _Answer(host, None, {}, f"ssh failed: {exc}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        said = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        why = said[-1].strip()[:300] if said else "no output"
        return _Answer(host, None, {}, f"exit {done.returncode}: {why}")
    data = json.loads(line[len(_MARK) :])
    facts = NodeFacts(
        host=host,
        hostname=str(data.get("hostname") or ""),
        reached_address=data.get("reached_address"),
        interfaces=dict(data.get("interfaces") or {}),
        cpus=tuple(int(c) for c in data.get("cpus") or ()),
        gpus=int(data.get("gpus") or 0),
        python=str(data.get("python") or python),
    )
    return _Answer(host, facts, dict(data.get("engine") or {}), None)


def gather(
    hosts: Sequence[str],
    *,
    engine_module: str | None = "vllm",
    python: str | None = None,
    timeout_s: float = FACTS_TIMEOUT_S,
) -> list[NodeFacts]:
    """Every node's facts, in the order given. Raises :class:`EnvironmentProblem` (exit 3)
    naming each node that could not be asked, or whose interpreter cannot import the engine."""
    python = python or node_python()
    modules = [engine_module] if engine_module else []
    with cf.ThreadPoolExecutor(max_workers=min(16, len(hosts)) or 1) as pool:
        answers = list(pool.map(lambda h: _ask(h, python, modules, timeout_s), hosts))
    unreachable = [a for a in answers if a.facts is None]
    if unreachable:
        said = "; ".join(f"{a.host} ({a.error})" for a in unreachable)
        raise EnvironmentProblem(
            f"cannot reach node(s) over ssh: {said}",
            hint="`ssh HOST true` must work without a prompt (BatchMode: keys, known hosts; "
            "user, port and key in ~/.ssh/config)",
        )
    missing = [a for a in answers if engine_module and not a.engine.get(engine_module, False)]
    if missing:
        said = ", ".join(f"{a.host} ({a.facts.python if a.facts else python})" for a in missing)
        raise EnvironmentProblem(
            f"{engine_module} is not importable on node(s): {said}",
            hint=f"install it there, or set {NODE_PYTHON_ENV} to the interpreter that has it "
            "(the same path on every node)",
        )
    return [a.facts for a in answers if a.facts is not None]
