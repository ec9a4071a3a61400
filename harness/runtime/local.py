"""The local runtime: the server as a subprocess in its own process group and session.

Its own session means a terminal's Ctrl-C reaches harness only; harness then stops the whole
group (SIGTERM, a grace period, SIGKILL), including workers that left the group.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

from harness.errors import EnvironmentProblem, PortInUse
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


def _rlimit_setter(limits: dict[str, int]) -> Callable[[], None]:
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
    """A server started by :class:`LocalRuntime`."""

    def __init__(
        self, spec: LaunchSpec, run: RunDir, proc: subprocess.Popen[bytes], log: IO[bytes]
    ):
        self.spec = spec
        self.run = run
        self._proc = proc
        self._log = log
        self._seen: set[int] = {proc.pid}

    def root_pid(self) -> int | None:
        return self._proc.pid

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self._proc.pid)
            children = root.children(recursive=True)
        except psutil.Error:
            return []
        out = [root.pid] + [c.pid for c in children]
        self._seen.update(out)
        return out

    def poll(self) -> int | None:
        return self._proc.poll()

    def stop(self, grace_s: float | None = None) -> int | None:
        grace = self.spec.deadlines.stop_grace_s if grace_s is None else grace_s
        members = self._members()
        self._signal_all(members, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self._proc.poll() is not None and not self._alive(members):
                break
            time.sleep(0.1)
        leftovers = self._alive(members)
        if leftovers:
            self._signal_all(leftovers, signal.SIGKILL)
            # A stopped (SIGSTOP) process dies on SIGKILL too; wait briefly for the reaper.
            psutil.wait_procs(leftovers, timeout=5)
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(OSError):
            self._log.close()
        return code

    def describe(self) -> str:
        return f"pid {self._proc.pid} (process group {self._proc.pid})"

    def _members(self) -> list[psutil.Process]:
        """Every process of the server: the group and every descendant seen, even if it left."""
        pids = set(self.pids()) | self._seen
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == self._proc.pid:
                    pids.add(proc.pid)
        procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        return procs

    @staticmethod
    def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
        alive = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    def _signal_all(self, procs: list[psutil.Process], sig: signal.Signals) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self._proc.pid, sig)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
                if sig == signal.SIGTERM:
                    # A stopped process cannot act on SIGTERM until continued.
                    proc.send_signal(signal.SIGCONT)


class LocalRuntime:
    """Starts a LaunchSpec as a local process group; output goes to ``server.log``."""

    def start(self, spec: LaunchSpec, run: RunDir) -> LocalHandle:
        check_port_free(spec.host, spec.port)
        env = {**os.environ, **spec.env}
        log = open(run.server_log, "ab", buffering=0)  # noqa: SIM115 - owned by the handle
        try:
            proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=run.path,
                start_new_session=True,
                preexec_fn=_rlimit_setter(spec.rlimits),
            )
        except FileNotFoundError:
            log.close()
            raise EnvironmentProblem(
                f"cannot start {spec.engine}: {spec.argv[0]} not found",
                hint="install the engine (make serve installs vLLM's CPU build), "
                "or set HARNESS_ENGINE_PYTHON to the Python that has it",
            ) from None
        try:
            create_time: float | None = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = None
        run.write_state(
            runtime="local",
            pid=proc.pid,
            create_time=create_time,
            pgid=proc.pid,
            argv=spec.argv,
            status="starting",
            started_at=time.time(),
            harness_pid=os.getpid(),
        )
        return LocalHandle(spec, run, proc, log)


def stop_local_run(run: RunDir, grace_s: float = 15.0) -> bool:
    """Stop a local run started by another harness process (``harness down``).

    Returns False when nothing of it was running. The process is matched on its recorded argv
    so a recycled pid is never signalled.
    """
    state = run.read_state()
    pid = state.get("pid")
    if not isinstance(pid, int) or not local_run_alive(state):
        return False
    procs: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
                proc.send_signal(signal.SIGCONT)
        _, alive = psutil.wait_procs(procs, timeout=grace_s if sig == signal.SIGTERM else 5)
        if not alive:
            break
    run.write_state(status="stopped", stopped_at=time.time())
    return True


def local_run_alive(state: dict[str, object]) -> bool:
    """Whether the run's recorded root process is still the one harness started (matched on
    its creation time, so a recycled pid is never taken for it)."""
    pid = state.get("pid")
    created = state.get("create_time")
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not isinstance(created, float) or abs(proc.create_time() - created) < 1.0
    except psutil.Error:
        return False


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
