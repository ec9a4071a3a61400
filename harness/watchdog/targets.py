"""Which processes ``harness dump`` captures: a run's server, a pid's tree, a container's.

Containers are resolved through :mod:`harness.runtime.docker` when it offers
``container_pids``/``container_exec``; otherwise through the ``docker`` command line (this
package never imports the Docker SDK).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from harness.errors import BadInput, DockerProblem, RunNotFound
from harness.rundir import RunDir
from harness.spec import LaunchSpec
from harness.watchdog.probes import process_tree
from harness.watchdog.pyspy import ContainerExec


@dataclass
class Target:
    pids: list[int]
    description: str
    container_exec: ContainerExec | None = None
    spec: LaunchSpec | None = None


def pid_target(pids: Sequence[int]) -> Target:
    """Each pid and its descendants."""
    out: list[int] = []
    for pid in pids:
        if not psutil.pid_exists(pid):
            raise BadInput(f"no process {pid}", hint="ps -ef | grep python")
        out += [p for p in process_tree(pid) if p not in out]
    return Target(out, "pid " + ", ".join(str(p) for p in pids))


def _docker_cli() -> str:
    exe = shutil.which("docker")
    if exe is None:
        raise DockerProblem("the docker command is not installed here")
    return exe


def container_pids(name: str) -> list[int]:
    """Host PIDs of every process in container ``name`` (its PID 1 first)."""
    try:
        from harness.runtime import docker as rt

        fn = getattr(rt, "container_pids", None)
        if callable(fn):
            return [int(p) for p in fn(name)]
    except ImportError:
        pass
    cp = subprocess.run(
        [_docker_cli(), "inspect", "--format", "{{.State.Pid}}", name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if cp.returncode != 0 or not cp.stdout.strip().isdigit():
        raise DockerProblem(
            f"no running container {name!r}: {cp.stderr.strip()[:200]}", hint="docker ps"
        )
    init = int(cp.stdout.strip())
    if init == 0:
        raise DockerProblem(f"container {name!r} is not running", hint="docker ps -a")
    return process_tree(init)


def container_exec(name: str) -> ContainerExec:
    """Runs a command inside container ``name`` (``docker exec``): py-spy without host ptrace."""
    try:
        from harness.runtime import docker as rt

        fn = getattr(rt, "container_exec", None)
        if callable(fn):
            result: ContainerExec = fn(name)
            return result
    except ImportError:
        pass
    exe = _docker_cli()

    def run(argv: Sequence[str], timeout: float) -> tuple[int, str]:
        try:
            cp = subprocess.run(
                [exe, "exec", name, *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                errors="replace",
            )
        except subprocess.TimeoutExpired:
            return -1, f"docker exec timed out after {timeout:g} s"
        return cp.returncode, cp.stdout + cp.stderr

    return run


def container_target(name: str) -> Target:
    pids = container_pids(name)
    return Target(pids, f"container {name}", container_exec(name))


def run_target(run: RunDir) -> Target:
    """The live server of a run harness started (local process group or container)."""
    spec: LaunchSpec | None = None
    try:
        spec = LaunchSpec.from_json(run.launch_spec.read_text())
    except (OSError, ValueError):
        spec = None
    state = run.read_state()
    if (state.get("runtime") == "docker" or (spec and spec.runtime == "docker")) and (
        spec and spec.container
    ):
        name = str(state.get("container") or state.get("container_name") or spec.container.name)
        t = container_target(name)
        t.spec = spec
        return t
    pid = state.get("pid")
    if isinstance(pid, int) and psutil.pid_exists(pid):
        t = pid_target([pid])
        t.spec = spec
        t.description = f"run {run.run_id} ({t.description})"
        return t
    raise RunNotFound(
        f"run {run.run_id} has no live server process",
        hint="harness ps lists live servers; harness dump --pid PID for any process",
    )
