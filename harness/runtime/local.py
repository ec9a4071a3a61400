"""The local runtime: the server as a subprocess in its own process group and session.

Its own session means a terminal's Ctrl-C reaches harness only; harness then stops the whole
group (SIGTERM, a grace period, SIGKILL), including workers that left the group.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

from harness import procgroup
from harness.errors import EnvironmentProblem, PortInUse
from harness.procgroup import ProcessRef
from harness.rundir import RunDir
from harness.spec import LaunchSpec

_RLIMITS = {
    "core": resource.RLIMIT_CORE,
    "stack": resource.RLIMIT_STACK,
    "nofile": resource.RLIMIT_NOFILE,
    "memlock": resource.RLIMIT_MEMLOCK,
}


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUse` naming the process that holds the port, when it can be found."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise EnvironmentProblem(f"cannot bind {host}:{port}: {exc.strerror}") from None
            holder = _port_holder(port)
            raise PortInUse(
                f"port {port} on {host} is already in use{holder}",
                hint="pick another with --port, or stop an old run: harness down --all",
            ) from None


def _port_holder(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN
            if listening and getattr(conn.laddr, "port", None) == port and conn.pid:
                name = psutil.Process(conn.pid).name()
                return f" (by pid {conn.pid}, {name})"
    except (psutil.Error, OSError):
        pass
    return ""


def rlimit_setter(limits: dict[str, int]) -> Callable[[], None]:
    """preexec_fn applying the plan's rlimits (best effort: a refused limit must not block the
    launch; plan-time warnings already say what the host allows)."""
    wanted = {
        _RLIMITS[name]: (resource.RLIM_INFINITY if value < 0 else value)
        for name, value in limits.items()
        if name in _RLIMITS
    }

    def apply() -> None:
        for which, value in wanted.items():
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(which, (value, value))

    return apply


def refused_rlimits(limits: dict[str, int]) -> list[str]:
    """Limits above this host's hard limit (they will be capped), as readable lines."""
    out = []
    is_root = os.geteuid() == 0
    for name, value in limits.items():
        which = _RLIMITS.get(name)
        if which is None:
            continue
        _, hard = resource.getrlimit(which)
        want = resource.RLIM_INFINITY if value < 0 else value
        too_high = want == resource.RLIM_INFINITY or want > hard
        if hard != resource.RLIM_INFINITY and too_high and not is_root:
            out.append(f"ulimit {name}={value} exceeds this host's hard limit {hard}")
    return out


class LocalHandle:
    """A server started by :class:`LocalRuntime` (``popen`` set) or found again from its run
    directory by :meth:`LocalRuntime.attach` (another harness process started it)."""

    def __init__(
        self,
        spec: LaunchSpec,
        run: RunDir,
        root: ProcessRef,
        *,
        popen: subprocess.Popen[bytes] | None = None,
        log: IO[bytes] | None = None,
    ):
        self.spec = spec
        self.run = run
        self._root = root
        self._proc = popen
        self._log = log
        self._seen: set[int] = {root.pid}

    def root_pid(self) -> int | None:
        return self._root.pid

    def pids(self) -> list[int]:
        out = procgroup.tree(self._root.pid) if self._root.alive() else []
        self._seen.update(out)
        return out

    def poll(self) -> int | None:
        if self._proc is not None:
            return self._proc.poll()
        # Not our child: its exit code is unknowable. Gone means "exited abnormally" unless
        # the run was stopped on purpose (harness down records that first).
        if self._root.alive():
            return None
        return 0 if self.run.read_state().get("status") == "stopped" else ATTACHED_EXIT_UNKNOWN

    def stop(self, grace_s: float | None = None) -> int | None:
        grace = self.spec.deadlines.stop_grace_s if grace_s is None else grace_s
        code = procgroup.stop_tree(self._root.pid, grace_s=grace, also=self._seen, popen=self._proc)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
        return code

    def describe(self) -> str:
        return f"pid {self._root.pid} (process group {self._root.pid})"


#: What :meth:`LocalHandle.poll` reports for an attached server that vanished (not our child,
#: so its real exit code cannot be read).
ATTACHED_EXIT_UNKNOWN = 255


class LocalRuntime:
    """Starts a LaunchSpec as a local process group; output goes to ``server.log``."""

    def start(self, spec: LaunchSpec, run: RunDir) -> LocalHandle:
        check_port_free(spec.host, spec.port)
        env = {**os.environ, **spec.env}
        log = open(run.server_log, "ab", buffering=0)  # noqa: SIM115 - owned by the handle
        try:
            proc = procgroup.spawn(
                spec.argv,
                stdout=log,
                env=env,
                cwd=run.path,
                preexec_fn=rlimit_setter(spec.rlimits),
            )
        except FileNotFoundError:
            log.close()
            raise EnvironmentProblem(
                f"cannot start {spec.engine}: {spec.argv[0]} not found",
                hint="install the engine (make serve installs vLLM's CPU build), "
                "or set HARNESS_ENGINE_PYTHON to the Python that has it",
            ) from None
        root = ProcessRef.of(proc.pid)
        run.write_state(
            runtime="local",
            pid=proc.pid,
            create_time=root.create_time,
            pgid=proc.pid,
            argv=spec.argv,
            status="starting",
            started_at=time.time(),
            harness_pid=os.getpid(),
        )
        return LocalHandle(spec, run, root, popen=proc, log=log)

    def attach(self, spec: LaunchSpec, run: RunDir) -> LocalHandle:
        """The live server of ``run`` (started by another harness process), for a watcher."""
        ref = ProcessRef.from_dict(run.read_state())
        if ref is None or not ref.alive():
            raise EnvironmentProblem(f"run {run.run_id} has no live local server")
        return LocalHandle(spec, run, ref)


def stop_local_run(run: RunDir, grace_s: float = 15.0) -> bool:
    """Stop a local run started by another harness process (``harness down``).

    Returns False when nothing of it was running. The process is matched on its recorded
    creation time so a recycled pid is never signalled.
    """
    ref = ProcessRef.from_dict(run.read_state())
    if ref is None or not procgroup.stop_ref(ref, grace_s=grace_s):
        return False
    run.write_state(status="stopped", stopped_at=time.time())
    return True


def local_run_alive(state: dict[str, object]) -> bool:
    """Whether the run's recorded root process is still the one harness started (matched on
    its creation time, so a recycled pid is never taken for it)."""
    ref = ProcessRef.from_dict(state)
    return ref is not None and ref.alive()


def tail_lines(path: Path, n: int = 20) -> list[str]:
    """The last ``n`` lines of a log file (reads at most the last 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            data = fh.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-n:]
