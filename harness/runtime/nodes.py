"""Multi-node servers (``--nodes N --node-hosts h1,h2``): the plan's nodes started over ssh.

Every node runs its part of the plan (:class:`~harness.spec.NodeSpec`: the head serves the API,
the others run vLLM headless) as a process group on that node: harness runs ``ssh HOST sh -s``
and writes a small script to its standard input (so the environment, secrets included, never
appears on a command line, here or there): it applies the plan's ulimits, prints the shell's
pid (the engine ``exec``s into it and leads its process group: sshd starts every command in a
session of its own), exports the node's environment and ``exec``s the engine. Each node's
output comes back through its ssh into the run directory: ``server.log`` for the head (the log
the startup rules read), ``server.<host>.log`` for the others.

Stopping signals each node's process group over ssh (SIGTERM, then SIGKILL after the grace),
then ends the local ssh clients. The ssh clients run in sessions of their own, so a server kept
after harness exits (``--detach``, ``--on-hang keep``) keeps its logs flowing; ``harness down``
stops it from ``state.json`` (the nodes, their remote pids, the local ssh clients).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness import procgroup
from harness.errors import BadInput, EnvironmentProblem
from harness.nodefacts import CONNECT_TIMEOUT_S, ssh_argv
from harness.procgroup import ProcessRef
from harness.rundir import RunDir
from harness.spec import LaunchSpec, NodeSpec

#: The line each node prints first: ``#harness-node pid N on HOSTNAME``.
PID_MARK = "#harness-node pid "
_PID_LINE = re.compile(r"^#harness-node pid (\d+)")
#: Seconds to wait for every node's pid line (ssh connect and login included).
STARTED_TIMEOUT_S = CONNECT_TIMEOUT_S + 20.0
#: What ``poll`` reports for an attached server whose ssh vanished (its exit code is unknown).
ATTACHED_EXIT_UNKNOWN = 255

# ulimit flags of a POSIX shell for the plan's rlimits (values in the shell's units).
_ULIMIT_FLAGS = {
    "stack": ("-s", 1024),
    "core": ("-c", 512),
    "nofile": ("-n", 1),
    "memlock": ("-l", 1024),
}


def launch_script(spec: LaunchSpec, node: NodeSpec) -> str:
    """The script ``sh -s`` runs on ``node`` (written to ssh's standard input)."""
    lines = ["umask 022"]
    for name, value in spec.rlimits.items():
        if name not in _ULIMIT_FLAGS:
            continue
        flag, unit = _ULIMIT_FLAGS[name]
        amount = "unlimited" if value < 0 else str(max(1, value // unit))
        # Best effort, as for the local runtime: a refused limit must not block the start.
        lines.append(f"ulimit {flag} {amount} 2>/dev/null || true")
    run_dir = shlex.quote(spec.run_dir)
    lines += [
        f"mkdir -p {run_dir} 2>/dev/null; cd {run_dir} 2>/dev/null || cd /",
        f'echo "{PID_MARK}$$ on $(hostname)"',
    ]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in node.env.items()]
    lines.append("exec " + shlex.join(node.argv))
    return "\n".join(lines) + "\n"


def stop_script(pid: int, grace_s: float) -> str:
    """Stop the process group ``pid`` leads on a node: SIGTERM, SIGKILL after ``grace_s``."""
    ticks = max(1, round(grace_s / 0.2))
    # ``kill -SIG -PGID`` (no ``--``): the form dash and bash both take.
    return (
        f"p={pid}; kill -TERM -$p 2>/dev/null || exit 0; n=0; "
        "while kill -0 -$p 2>/dev/null; do n=$((n+1)); "
        f'if [ "$n" -gt {ticks} ]; then kill -KILL -$p 2>/dev/null; exit 0; fi; '
        "sleep 0.2; done"
    )


def _read_pid(log: Path, offset: int) -> int | None:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    for line in head.splitlines():
        match = _PID_LINE.match(line)
        if match:
            return int(match.group(1))
    return None


@dataclass
class _Node:
    spec: NodeSpec
    ssh: ProcessRef
    log: Path
    remote_pid: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    #: Where this start's output begins in the log (a restart appends to the same file).
    offset: int = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "host": self.spec.host,
            "rank": self.spec.rank,
            "address": self.spec.address,
            "pid": self.remote_pid,
            "ssh": self.ssh.to_dict(),
            "log": self.log.name,
        }


class NodesHandle:
    """A multi-node server: one ssh client per node here, one process group per node there.
    Implements :class:`harness.runtime.base.ServerHandle`; ``pids()`` are the local ssh
    clients (alive exactly while their node's engine runs)."""

    def __init__(self, spec: LaunchSpec, run: RunDir, nodes: list[_Node]) -> None:
        self.spec = spec
        self.run = run
        self.nodes = nodes
        self._stopped = False

    @property
    def hosts(self) -> list[str]:
        return [n.spec.host for n in self.nodes]

    def remote_pids(self) -> dict[str, int | None]:
        """Each node's engine pid (its process group) on that node."""
        return {n.spec.host: n.remote_pid for n in self.nodes}

    def root_pid(self) -> int | None:
        return self.nodes[0].ssh.pid if self.nodes else None

    def pids(self) -> list[int]:
        return [n.ssh.pid for n in self.nodes if n.ssh.alive()]

    def poll(self) -> int | None:
        """The head's exit code once its engine exited; a worker node's when that one ended
        first (the server cannot serve without it)."""
        for node in self.nodes:
            if node.popen is not None:
                code = node.popen.poll()
                if code is not None:
                    return code
            elif not node.ssh.alive():
                stopped = self.run.read_state().get("status") == "stopped"
                return 0 if stopped else ATTACHED_EXIT_UNKNOWN
        return None

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM every node's process group over ssh, SIGKILL after the grace, then end the
        local ssh clients. Safe to call twice."""
        grace = self.spec.deadlines.stop_grace_s if grace_s is None else grace_s
        if not self._stopped:
            self._stopped = True
            with cf.ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
                list(pool.map(lambda n: self._stop_remote(n, grace), self.nodes))
            for node in self.nodes:
                self._end_ssh(node)
        head = self.nodes[0] if self.nodes else None
        return head.popen.poll() if head is not None and head.popen is not None else None

    def _stop_remote(self, node: _Node, grace_s: float) -> None:
        if node.remote_pid is None:
            return
        script = stop_script(node.remote_pid, grace_s)
        argv = ssh_argv(node.spec.host, "sh -c " + shlex.quote(script))
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=grace_s + CONNECT_TIMEOUT_S + 10,
            )

    @staticmethod
    def _end_ssh(node: _Node) -> None:
        """The node's engine is gone: its ssh ends by itself; past a few seconds it is stopped
        (a node that no longer answers must not keep harness waiting)."""
        if node.popen is not None:
            try:
                node.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                procgroup.stop_tree(node.popen.pid, grace_s=2, popen=node.popen)
        elif node.ssh.alive():
            procgroup.stop_ref(node.ssh, grace_s=2)
        if node.log_file is not None:
            with contextlib.suppress(OSError):
                node.log_file.close()

    def describe(self) -> str:
        parts = []
        for node in self.nodes:
            where = f"remote pid {node.remote_pid}" if node.remote_pid else "no pid yet"
            parts.append(f"{node.spec.host} ({node.spec.role} {node.spec.address}, {where})")
        return f"{len(self.nodes)} nodes: " + ", ".join(parts)


class NodesRuntime:
    """Starts a multi-node plan over ssh (see the module docstring)."""

    def start(self, spec: LaunchSpec, run: RunDir) -> NodesHandle:
        """Start every node (head first) and wait until each has printed its engine's pid.
        A node whose ssh fails is stopped with the others and named (exit 3)."""
        if spec.runtime == "docker":
            raise BadInput(
                "serve --nodes runs the engine on each node as a process over ssh; containers "
                "on several hosts are started per host",
                hint="harness plan ... --runtime docker --format compose (one service per "
                "node: `docker compose up <service>` on that node), or serve without "
                "--runtime docker",
            )
        run.create()
        nodes: list[_Node] = []
        try:
            for node_spec in spec.nodes:
                nodes.append(self._start_node(spec, run, node_spec))
            handle = NodesHandle(spec, run, nodes)
            self._wait_for_pids(handle)
        except BaseException:
            NodesHandle(spec, run, nodes).stop(grace_s=2)
            raise
        run.write_state(
            runtime="nodes",
            nodes=[n.to_state() for n in nodes],
            status="starting",
            started_at=time.time(),
        )
        return handle

    @staticmethod
    def _start_node(spec: LaunchSpec, run: RunDir, node: NodeSpec) -> _Node:
        log = run.path / node.log_name
        log_file = open(log, "ab", buffering=0)  # noqa: SIM115 - owned by the handle
        offset = log.stat().st_size
        try:
            popen = subprocess.Popen(
                ssh_argv(node.host, "sh -s"),
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise EnvironmentProblem(
                f"cannot start ssh to {node.host}: {exc}", hint="apt-get install openssh-client"
            ) from None
        assert popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            popen.stdin.write(launch_script(spec, node).encode())
            popen.stdin.close()
        return _Node(
            node, ProcessRef.of(popen.pid), log, popen=popen, log_file=log_file, offset=offset
        )

    @staticmethod
    def _wait_for_pids(handle: NodesHandle) -> None:
        deadline = time.monotonic() + STARTED_TIMEOUT_S
        pending = list(handle.nodes)
        while pending:
            for node in list(pending):
                node.remote_pid = _read_pid(node.log, node.offset)
                if node.remote_pid is not None:
                    pending.remove(node)
                elif node.popen is not None and node.popen.poll() is not None:
                    said = _last_line(node.log)
                    raise EnvironmentProblem(
                        f"node {node.spec.host}: ssh exited with {node.popen.returncode} before "
                        f"the engine started: {said}",
                        hint=f"`ssh {node.spec.host} true` must work without a prompt",
                    )
            if pending and time.monotonic() > deadline:
                names = ", ".join(n.spec.host for n in pending)
                raise EnvironmentProblem(
                    f"node(s) {names} did not start within {STARTED_TIMEOUT_S:g} s (ssh hangs)"
                )
            if pending:
                time.sleep(0.1)

    def attach(self, spec: LaunchSpec, run: RunDir) -> NodesHandle:
        """The live multi-node server of ``run`` (started by another harness process)."""
        return handle_from_state(spec, run)


def handle_from_state(spec: LaunchSpec, run: RunDir) -> NodesHandle:
    """A handle on the nodes recorded in ``run``'s state.json (for a watcher or ``down``)."""
    state = run.read_state()
    recorded = {int(n.get("rank", -1)): n for n in state.get("nodes") or [] if isinstance(n, dict)}
    nodes: list[_Node] = []
    for node_spec in spec.nodes:
        entry = recorded.get(node_spec.rank, {})
        ssh = ProcessRef.from_dict(entry.get("ssh")) or ProcessRef(-1, None)
        pid = entry.get("pid")
        nodes.append(
            _Node(
                node_spec,
                ssh,
                run.path / node_spec.log_name,
                remote_pid=pid if isinstance(pid, int) else None,
            )
        )
    return NodesHandle(spec, run, nodes)


def stop_nodes_run(run: RunDir, spec: LaunchSpec, grace_s: float | None = None) -> bool:
    """Stop a multi-node run started by another harness process (``harness down``). Returns
    False when it was already stopped."""
    if run.read_state().get("status") == "stopped":
        return False
    handle = handle_from_state(spec, run)
    handle.stop(grace_s)
    run.write_state(status="stopped", stopped_at=time.time())
    return True


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1].strip()[:300] if lines else "no output"
