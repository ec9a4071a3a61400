"""Which processes ``harness dump`` captures: a run's server, a pid's tree, a container's.

Containers are resolved by the caller's :data:`ContainerAccess` (the command line passes the
Docker runtime's :func:`harness.runtime.docker_runs.container_access`): this package neither
imports the runtime nor runs the ``docker`` command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

from harness.errors import BadInput, RunNotFound
from harness.rundir import RunDir
from harness.spec import LaunchSpec
from harness.watchdog.probes import process_tree
from harness.watchdog.pyspy import ContainerExec

#: Container name -> (host pids of its processes, PID 1 first; a way to run commands inside).
ContainerAccess = Callable[[str], tuple[list[int], ContainerExec]]


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


def container_target(name: str, access: ContainerAccess) -> Target:
    """Every process of container ``name``, with a way to run py-spy inside it."""
    pids, run_inside = access(name)
    return Target(pids, f"container {name}", run_inside)


def run_target(run: RunDir, access: ContainerAccess) -> Target:
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
        t = container_target(name, access)
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
