"""The Docker runtime: a LaunchSpec's server as one container (the only module importing docker).

:class:`DockerRuntime` creates the container exactly as the plan's
:class:`~harness.spec.ContainerSpec` says (IPC, shm size, network, GPUs as device requests,
capabilities, ulimits, mounts, labels, init process; never privileged), starts it, and follows
its log stream into ``runs/<run-id>/server.log``. The returned :class:`DockerHandle` reports
HOST pids of the container's processes, so py-spy and /proc work from the host unchanged.

When the host refuses a setting (a ulimit above the daemon's hard limit is the usual one) the
half-created container is removed and :class:`~harness.errors.DockerProblem` names the setting,
the host's limit and the profile key to change.

:func:`docker_ps` and :func:`docker_down` find harness containers by their labels, so they also
find containers whose harness process was killed (orphans).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import docker
import psutil
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest, Ulimit

from harness.containerplan import (
    LABEL_ENGINE,
    LABEL_RUN_DIR,
    LABEL_RUN_ID,
    LABEL_TP,
)
from harness.errors import BadInput, DockerProblem
from harness.render import PASSTHROUGH_ENV
from harness.rundir import RunDir
from harness.spec import ContainerSpec, LaunchSpec

#: Labels the runtime adds at creation (not part of the plan): who started the container, so
#: ``docker_ps`` can tell orphans, and the stop grace ``docker_down`` should give it.
LABEL_OWNER_PID = "harness.owner_pid"
LABEL_OWNER_HOST = "harness.owner_host"
LABEL_STOP_GRACE = "harness.stop_grace_s"

#: Seconds any single Docker API call may take (stop/wait add their own grace on top).
API_TIMEOUT_S = 60.0

# Linux RLIMIT_* numbers as runc reports them ("error setting rlimit type 8").
_RLIMIT_BY_NUMBER = {
    0: "cpu",
    1: "fsize",
    2: "data",
    3: "stack",
    4: "core",
    5: "rss",
    6: "nproc",
    7: "nofile",
    8: "memlock",
    9: "as",
    10: "locks",
    11: "sigpending",
    12: "msgqueue",
    13: "nice",
    14: "rtprio",
    15: "rttime",
}
# Row titles of /proc/<pid>/limits.
_LIMITS_ROW = {
    "cpu": "Max cpu time",
    "fsize": "Max file size",
    "data": "Max data size",
    "stack": "Max stack size",
    "core": "Max core file size",
    "rss": "Max resident set",
    "nproc": "Max processes",
    "nofile": "Max open files",
    "memlock": "Max locked memory",
    "locks": "Max file locks",
    "sigpending": "Max pending signals",
    "msgqueue": "Max msgqueue size",
    "nice": "Max nice priority",
    "rtprio": "Max realtime priority",
    "rttime": "Max realtime timeout",
}
_ULIMIT_SHELL_FLAG = {"memlock": "-l", "nofile": "-n", "stack": "-s", "core": "-c", "nproc": "-u"}


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _explain(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return _one_line(str(exc.explanation or exc))
    return _one_line(str(exc))


def docker_client(timeout_s: float = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the Docker engine of the environment (``DOCKER_HOST`` or the local socket);
    :class:`DockerProblem` with what to do when it cannot be reached."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=math.ceil(timeout_s))
        client.ping()
    except (DockerException, requests.RequestException, OSError) as exc:
        reason = _explain(exc)
        if "Permission denied" in reason:
            hint = "add yourself to the docker group (sudo usermod -aG docker $USER) or use sudo"
        else:
            hint = (
                "start the engine (sudo systemctl start docker, or `sudo dockerd &`); install it "
                "with `sudo apt-get install docker.io`; scripts/ci/docker.sh does both"
            )
        raise DockerProblem(
            f"cannot reach the Docker engine at {where}: {reason}", hint=hint
        ) from None
    return client


# ---------------------------------------------------------------------------------------------
# Host limits (for explaining a refused ulimit)


def parse_proc_limits(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/<pid>/limits`` -> ``{name: (soft, hard)}`` with -1 for unlimited."""
    out: dict[str, tuple[int, int]] = {}
    rows = {title: name for name, title in _LIMITS_ROW.items()}
    for line in text.splitlines()[1:]:
        for title, name in rows.items():
            if line.startswith(title):
                fields = line[len(title) :].split()
                if len(fields) >= 2:
                    soft, hard = (-1 if f == "unlimited" else int(f) for f in fields[:2])
                    out[name] = (soft, hard)
    return out


def _dockerd_pid() -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == "dockerd":
            return int(proc.pid)
    return None


def host_limits() -> tuple[dict[str, tuple[int, int]], str]:
    """The limits containers inherit: those of a local dockerd if readable, else this
    process's. Returns the limits and where they were read."""
    candidates: list[tuple[str, str]] = []
    pid = _dockerd_pid()
    if pid is not None:
        candidates.append((f"/proc/{pid}/limits", f"dockerd's, /proc/{pid}/limits"))
    candidates.append(("/proc/self/limits", "/proc/self/limits"))
    for path, label in candidates:
        try:
            return parse_proc_limits(Path(path).read_text()), label
        except OSError:
            continue
    return {}, "unknown"


def _fmt_limit(value: int) -> str:
    return "unlimited" if value < 0 else str(value)


def refused_ulimit(
    message: str,
    requested: Mapping[str, int],
    limits: Mapping[str, tuple[int, int]],
) -> str | None:
    """Which requested ulimit a Docker start error is about (``None`` if it is not about one)."""
    if "rlimit" not in message.lower():
        return None
    match = re.search(r"rlimit type (\d+)", message)
    if match:
        name = _RLIMIT_BY_NUMBER.get(int(match.group(1)))
        if name in requested:
            return name
    for name, value in requested.items():
        hard = limits.get(name, (-1, -1))[1]
        if hard >= 0 and (value < 0 or value > hard):
            return name
    return next(iter(requested), None)


def ulimit_problem(
    name: str, value: int, limits: Mapping[str, tuple[int, int]], source: str
) -> DockerProblem:
    """The one-line error for a ulimit the host refused."""
    hard = limits.get(name, (None, None))[1]
    host = (
        f"this host's hard limit is {_fmt_limit(hard)} ({source})"
        if hard is not None
        else ("this host's limit is lower")
    )
    fit = f"to {hard} or less" if hard is not None and hard >= 0 else "lower"
    flag = _ULIMIT_SHELL_FLAG.get(name, "")
    return DockerProblem(
        f"Docker refused ulimit {name}={_fmt_limit(value)}: {host}",
        hint=(
            f"set container.ulimits.{name} {fit} in your profile or drop it; or raise the limit "
            f"dockerd runs with (Limit{name.upper()}= in docker.service"
            + (f", `ulimit {flag}` before starting dockerd" if flag else "")
            + ")"
        ),
    )


# ---------------------------------------------------------------------------------------------
# Creating the container


def _device_requests(gpus: str | int | list[int] | None) -> list[DeviceRequest]:
    if gpus is None:
        return []
    if isinstance(gpus, list):
        return [DeviceRequest(device_ids=[str(i) for i in gpus], capabilities=[["gpu"]])]
    count = -1 if gpus == "all" else int(gpus)
    return [DeviceRequest(count=count, capabilities=[["gpu"]])]


def create_kwargs(
    spec: LaunchSpec, *, caller_env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for a docker plan (no I/O)."""
    c = _require_container(spec)
    env = dict(spec.env)
    for name in PASSTHROUGH_ENV:
        value = (caller_env or {}).get(name)
        if value and name not in env:
            env[name] = value
    labels = {
        **c.labels,
        LABEL_OWNER_PID: str(os.getpid()),
        LABEL_OWNER_HOST: os.uname().nodename,
        LABEL_STOP_GRACE: str(spec.deadlines.stop_grace_s),
    }
    kwargs: dict[str, Any] = {
        "image": c.image,
        "name": c.name,
        "entrypoint": [spec.argv[0]],
        "command": list(spec.argv[1:]),
        "environment": env,
        "labels": labels,
        "init": c.init,
        "privileged": False,
        "ipc_mode": c.ipc_mode,
        "network_mode": c.network_mode,
        "cap_add": list(c.cap_add) or None,
        "ulimits": [Ulimit(name=k, soft=v, hard=v) for k, v in c.ulimits.items()] or None,
        "volumes": {src: {"bind": v.bind, "mode": v.mode} for src, v in c.volumes.items()},
        "device_requests": _device_requests(c.gpus) or None,
        "stop_signal": "SIGTERM",
        "detach": True,
    }
    if c.shm_size:
        kwargs["shm_size"] = c.shm_size
    if c.ports:
        kwargs["ports"] = {port: (ip, host_port) for port, (ip, host_port) in c.ports.items()}
    return kwargs


def _require_container(spec: LaunchSpec) -> ContainerSpec:
    if spec.container is None:
        raise BadInput("this plan has no container; plan it with --runtime docker")
    return spec.container


# ---------------------------------------------------------------------------------------------
# Logs


class _LogStream(Protocol):
    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...


_NS = 1_000_000_000
# Docker's RFC3339NanoFixed prefix of each message when asked for timestamps (UTC "Z" in
# practice; an offset is accepted too).
_TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")
_SECONDS_CACHE: dict[bytes, int] = {}


def split_timestamp(message: bytes) -> tuple[int | None, bytes]:
    """One message of a log stream read with ``timestamps=True`` -> (nanoseconds since the
    epoch, the message as the container wrote it). ``None`` when it carries no timestamp."""
    match = _TIMESTAMP.match(message)
    if match is None:
        return None, message
    key = match.group(1) + match.group(3)
    seconds = _SECONDS_CACHE.get(key)
    if seconds is None:
        seconds = int(datetime.fromisoformat(key.decode()).timestamp())
        if len(_SECONDS_CACHE) > 4096:
            _SECONDS_CACHE.clear()
        _SECONDS_CACHE[key] = seconds
    fraction = (match.group(2) or b"").ljust(9, b"0")
    return seconds * _NS + int(fraction), message[match.end() :]


class LogCursor:
    """How far a copy of a container's log stream got, so another process can go on from there
    without repeating or losing a message.

    The resume point is ``(since_s, skip)``: ask Docker for the messages since the whole second
    ``since_s`` and drop those older than it plus the first ``skip`` of the rest. That is exact
    whatever the daemon's ``since`` granularity: the messages already copied are a prefix of
    the stream in Docker's order, so those at or after ``since_s`` come first in the answer.
    ``since_s`` is one second before the newest copied message because stdout and stderr
    messages are stamped by two goroutines and may be stored slightly out of time order."""

    def __init__(self) -> None:
        self._recent: deque[int] = deque()
        self._newest: int | None = None

    def add(self, ts_ns: int | None) -> None:
        """Count one message as copied (``ts_ns`` from :func:`split_timestamp`)."""
        if ts_ns is None:
            return
        if self._newest is None or ts_ns > self._newest:
            self._newest = ts_ns
        floor = self._since_ns()
        self._recent.append(ts_ns)
        # Only messages at or after the (only growing) resume second are ever counted.
        while self._recent and self._recent[0] < floor:
            self._recent.popleft()

    def _since_ns(self) -> int:
        return 0 if self._newest is None else max(0, self._newest // _NS - 1) * _NS

    def resume_point(self) -> tuple[int, int]:
        """``(since_s, skip)``; ``(0, 0)`` (from the start) when nothing was copied."""
        if self._newest is None:
            return 0, 0
        floor = self._since_ns()
        return floor // _NS, sum(1 for ts in self._recent if ts >= floor)


class ResumeFilter:
    """Which messages of a stream asked ``since=since_s`` were not copied yet (see
    :class:`LogCursor`)."""

    def __init__(self, since_s: int, skip: int) -> None:
        self._since_ns = since_s * _NS
        self._skip = skip

    def keep(self, ts_ns: int | None) -> bool:
        if ts_ns is None:
            return True
        if ts_ns < self._since_ns:
            return False
        if self._skip > 0:
            self._skip -= 1
            return False
        return True


class LogFollower:
    """Copies a container's output into ``server.log`` as it comes (a daemon thread).

    :meth:`stop` closes the stream so the thread ends even while the container is silent, and
    waits at most its deadline; after it nothing more is written, and :meth:`resume_point`
    says where another follower (:func:`spawn_log_follower`) has to go on."""

    def __init__(self, container: Container, path: Path) -> None:
        self._container = container
        self._path = path
        self._stream: _LogStream | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._cursor = LogCursor()
        self._thread = threading.Thread(
            target=self._run, name=f"docker-logs-{container.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with open(self._path, "ab", buffering=0) as out:
            try:
                stream: _LogStream = self._container.logs(
                    stream=True, follow=True, stdout=True, stderr=True, timestamps=True
                )
                with self._lock:
                    if self._stopping:
                        stream.close()
                        return
                    self._stream = stream
                for chunk in stream:
                    ts, message = split_timestamp(chunk)
                    # Under the lock: once stop() returned, the cursor is final.
                    with self._lock:
                        if self._stopping:
                            return
                        out.write(message)
                        self._cursor.add(ts)
            except Exception as exc:  # the daemon went away, the container was removed, ...
                with self._lock:
                    if not self._stopping:
                        out.write(f"[harness] log stream ended: {_explain(exc)}\n".encode())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following (idempotent); returns within ``timeout_s``."""
        with self._lock:
            self._stopping = True
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self._thread.join(timeout_s)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for the stream to end by itself: after the container
        exited, its last lines are still on the way."""
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def resume_point(self) -> tuple[int, int]:
        """Where the copy stands, as :meth:`LogCursor.resume_point`."""
        with self._lock:
            return self._cursor.resume_point()


#: The module a background log follower runs (``python -m``); also how it is recognised.
FOLLOWER_MODULE = "harness.runtime.docker_logs"


def spawn_log_follower(run: RunDir, container_name: str, since_s: int, skip: int) -> int:
    """Start :func:`follow_container_log` as its own process (own session, no terminal), so
    ``server.log`` keeps growing after harness exits. Returns its pid."""
    argv = [
        sys.executable, "-m", FOLLOWER_MODULE, "--run-dir", str(run.path),
        "--container", container_name, "--since", str(since_s), "--skip", str(skip),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    return proc.pid


def follow_container_log(
    run_dir: Path,
    container_name: str,
    since_s: int = 0,
    skip: int = 0,
    *,
    poll_s: float = 2.0,
    grace_s: float = 5.0,
) -> int:
    """The background log follower: append the container's messages from the resume point
    ``(since_s, skip)`` (see :class:`LogCursor`) to ``server.log`` until the stream ends (the
    container stopped). A watcher thread checks the container every ``poll_s``; once it is
    gone or stopped and the stream has not ended within ``grace_s``, the stream is closed, so
    the process never outlives its container for long. Returns the exit status."""
    with open(run_dir / "server.log", "ab", buffering=0) as out:
        try:
            container = docker_client().containers.get(container_name)
            stream: _LogStream = container.logs(
                stream=True, follow=True, stdout=True, stderr=True, timestamps=True,
                since=since_s if since_s > 0 else None,
            )  # fmt: skip
        except (DockerProblem, DockerException, requests.RequestException) as exc:
            out.write(f"[harness] log follower could not start: {_explain(exc)}\n".encode())
            return 1
        done = threading.Event()
        closed = threading.Event()

        def watch() -> None:
            while not done.wait(poll_s):
                try:
                    container.reload()
                    running = container.status not in {"exited", "dead"}
                except NotFound:
                    running = False
                except (APIError, requests.RequestException):
                    continue  # the daemon is busy; ask again
                if not running and not done.wait(grace_s):
                    closed.set()
                    with contextlib.suppress(Exception):
                        stream.close()
                    if not done.wait(grace_s):
                        os._exit(0)  # the stream did not give up its read; nothing to lose
                    return

        threading.Thread(target=watch, name="container-watch", daemon=True).start()
        keep = ResumeFilter(since_s, skip)
        try:
            for chunk in stream:
                ts, message = split_timestamp(chunk)
                if keep.keep(ts):
                    out.write(message)
        except Exception as exc:  # the daemon went away, ...
            if not closed.is_set():
                out.write(f"[harness] log stream ended: {_explain(exc)}\n".encode())
        finally:
            done.set()
    return 0


def stop_log_follower(run_dir: Path, timeout_s: float = 5.0) -> bool:
    """End the background log follower of a run (pid ``log_follower_pid`` in state.json) once
    its container is gone: it normally ends by itself after the last lines, so it gets
    ``timeout_s`` for that, then SIGTERM, then SIGKILL. Only a process that is really that
    follower is signalled (a recycled pid is left alone). True when one was running."""
    pid = RunDir(run_dir).read_state().get("log_follower_pid")
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                proc.wait(0)  # our own child (a test, a long-lived caller): reap it
            return False
    except psutil.Error:
        return False
    if FOLLOWER_MODULE not in cmdline or str(run_dir) not in cmdline:
        return False
    for signal_it in (None, proc.terminate, proc.kill):
        if signal_it is not None:
            with contextlib.suppress(psutil.Error):
                signal_it()
        try:
            proc.wait(timeout_s if signal_it is None else 2.0)
            break
        except psutil.TimeoutExpired:
            continue
        except psutil.Error:
            break
    return True


# ---------------------------------------------------------------------------------------------
# The handle


class DockerHandle:
    """A started server container. Implements :class:`harness.runtime.base.ServerHandle`."""

    def __init__(
        self,
        spec: LaunchSpec,
        run: RunDir,
        container: Container,
        follower: LogFollower | None,
    ) -> None:
        self.spec = spec
        self.run = run
        self.container = container
        self.name: str = str(container.name)
        self.id: str = str(container.id)
        self._follower = follower
        self._exit_code: int | None = None
        self._removed = False
        self._init_pid: int | None = None
        self._lock = threading.Lock()

    # -- pids -------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any] | None:
        try:
            self.container.reload()
        except NotFound:
            self._removed = True
            return None
        except (APIError, requests.RequestException):
            return None
        state = self.container.attrs.get("State", {})
        return state if isinstance(state, dict) else None

    def container_pid(self) -> int | None:
        """Host PID of the container's PID 1 (``docker-init`` when the plan asks for init)."""
        if self._init_pid is None:
            state = self._state()
            pid = int(state.get("Pid") or 0) if state else 0
            if pid > 0:
                self._init_pid = pid
        return self._init_pid

    def _top_pids(self) -> list[int]:
        """Host pids from ``docker top`` (used when /proc of the daemon's namespace is not ours)."""
        try:
            top = self.container.top()
        except (APIError, NotFound, requests.RequestException):
            return []
        titles = [str(t).upper() for t in top.get("Titles") or []]
        if "PID" not in titles:
            return []
        col = titles.index("PID")
        return [int(row[col]) for row in top.get("Processes") or [] if str(row[col]).isdigit()]

    def root_pid(self) -> int | None:
        """Host PID of the engine's main process: PID 1's child when an init process runs."""
        pid = self.container_pid()
        if pid is None:
            return None
        if not _require_container(self.spec).init:
            return pid
        try:
            children = psutil.Process(pid).children()
        except psutil.Error:
            tops = self._top_pids()
            return tops[1] if len(tops) > 1 else None
        return children[0].pid if children else None

    def pids(self) -> list[int]:
        """Host PIDs of the server's processes: the engine's main process, then descendants
        (the init process itself is left out)."""
        root = self.root_pid()
        if root is None:
            return []
        try:
            proc = psutil.Process(root)
            return [root, *(p.pid for p in proc.children(recursive=True))]
        except psutil.Error:
            init = self.container_pid()
            return [p for p in self._top_pids() if p != init]

    # -- lifecycle --------------------------------------------------------------------------

    def poll(self) -> int | None:
        """The container's exit code once it has exited (``-1`` if it vanished), else None."""
        if self._exit_code is not None:
            return self._exit_code
        state = self._state()
        if state is None:
            if self._removed:
                self._exit_code = -1
            return self._exit_code
        if state.get("Status") in {"exited", "dead"}:
            self._exit_code = int(state.get("ExitCode", -1))
        return self._exit_code

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM (Docker forwards it through the init process), SIGKILL after ``grace_s``
        (default: the plan's stop grace), then remove the container. Safe to call twice."""
        with self._lock:
            grace = self.spec.deadlines.stop_grace_s if grace_s is None else grace_s
            if not self._removed:
                follower = self._follower
                code = _stop_and_remove(
                    self.container,
                    grace,
                    before_remove=(lambda _c: follower.drain(5.0)) if follower else None,
                )
                if self._exit_code is None:
                    self._exit_code = code
                self._removed = True
            if self._follower is not None:
                self._follower.stop(timeout_s=5.0)
            return self._exit_code

    def detach(self) -> int | None:
        """Hand the copying of the container's output to ``server.log`` over to a background
        process (:func:`spawn_log_follower`), for a caller that exits while the container
        keeps running (``serve --detach``). It goes on exactly where this handle's follower
        stopped and ends with the container; its pid is recorded as ``log_follower_pid`` in
        state.json for :func:`docker_down`. Returns the pid, or None when there was nothing to
        hand over (no follower here, or the container is gone: its last lines are drained)."""
        with self._lock:
            follower = self._follower
            if follower is None or self._removed:
                return None
            if self.poll() is not None:
                follower.drain(5.0)
                follower.stop(timeout_s=5.0)
                return None
            follower.stop(timeout_s=5.0)
            self._follower = None
            since_s, skip = follower.resume_point()
            pid = spawn_log_follower(self.run, self.name, since_s, skip)
            self.run.write_state(log_follower_pid=pid)
            return pid

    def describe(self) -> str:
        """``container NAME (ID) image IMAGE, host pid N``."""
        c = _require_container(self.spec)
        root = self.root_pid() if not self._removed else None
        pid = f", host pid {root}" if root else ""
        return f"container {self.name} ({self.id[:12]}) image {c.image}{pid}"


def _stop_and_remove(
    container: Container,
    grace_s: float,
    before_remove: Callable[[Container], object] | None = None,
) -> int | None:
    """Stop with escalation and remove; the exit code when known. Never raises for a container
    that is already gone. ``before_remove`` runs on the stopped container (e.g. to save logs)."""
    code: int | None = None
    try:
        # Docker sends SIGTERM, waits ``timeout`` seconds, then SIGKILLs the whole container;
        # the HTTP timeout of this call is the client's plus ``timeout``.
        container.stop(timeout=max(0, math.ceil(grace_s)))
    except NotFound:
        return None
    except (APIError, requests.RequestException):
        with contextlib.suppress(APIError, NotFound, requests.RequestException):
            container.kill()
    try:
        result = container.wait(timeout=10)
        code = int(result.get("StatusCode", -1))
    except NotFound:
        return None
    except (APIError, requests.RequestException):
        code = None
    if before_remove is not None:
        before_remove(container)
    try:
        container.remove(force=True, v=True)
    except NotFound:
        pass
    except (APIError, requests.RequestException) as exc:
        raise DockerProblem(
            f"could not remove container {container.name}: {_explain(exc)}"
        ) from None
    return code


class DockerRuntime:
    """Starts a LaunchSpec planned with ``--runtime docker`` as a container."""

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        caller_env: Mapping[str, str] | None = None,
        follow_logs: bool = True,
    ) -> None:
        self._client = client
        self._caller_env = dict(os.environ if caller_env is None else caller_env)
        self._follow_logs = follow_logs

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def start(self, spec: LaunchSpec, run: RunDir) -> DockerHandle:
        """Create and start the container and begin copying its output to ``server.log``.
        Returns at once (the caller waits for health). Raises :class:`DockerProblem` when Docker
        is unreachable, the image is missing or the host refuses a setting; no container is
        left behind then."""
        c = _require_container(spec)
        client = self.client
        run.create()
        _ensure_image(client, c.image)
        kwargs = create_kwargs(spec, caller_env=self._caller_env)
        try:
            container = client.containers.create(**kwargs)
        except APIError as exc:
            raise _create_problem(exc, c) from None
        except requests.RequestException as exc:
            raise DockerProblem(f"creating container {c.name} failed: {_explain(exc)}") from None
        try:
            container.start()
        except BaseException as exc:
            _remove_quietly(container)
            if isinstance(exc, APIError):
                raise _start_problem(exc, c) from None
            if isinstance(exc, requests.RequestException):
                raise DockerProblem(
                    f"starting container {c.name} failed: {_explain(exc)}"
                ) from None
            raise
        follower: LogFollower | None = None
        if self._follow_logs:
            follower = LogFollower(container, run.server_log)
            follower.start()
        handle = DockerHandle(spec, run, container, follower)
        run.write_state(
            runtime="docker",
            container_id=handle.id,
            container_name=handle.name,
            image=c.image,
            container_pid=handle.container_pid(),
        )
        return handle

    def attach(self, spec: LaunchSpec, run: RunDir, *, follow_logs: bool = False) -> DockerHandle:
        """A handle on the already running container of ``spec`` (e.g. after ``serve
        --detach``, for ``harness dump`` or a watchdog), found by its run-id label."""
        run_id = spec.run_id
        try:
            found = self.client.containers.list(all=True, filters=_label_filter(run_id))
        except (APIError, requests.RequestException) as exc:
            raise DockerProblem(f"cannot list containers: {_explain(exc)}") from None
        if not found:
            raise DockerProblem(
                f"no container for run {run_id}", hint="`harness ps` lists the running ones"
            )
        container = found[0]
        follower: LogFollower | None = None
        if follow_logs:
            follower = LogFollower(container, run.server_log)
            follower.start()
        return DockerHandle(spec, run, container, follower)


def container_pids(name_or_id: str, client: docker.DockerClient | None = None) -> list[int]:
    """Host PIDs of every process in a container (``docker top``), init process included;
    what py-spy on the host needs to dump processes inside it."""
    client = client or docker_client()
    try:
        container = client.containers.get(name_or_id)
        top = container.top(ps_args="-eo pid")
    except NotFound:
        raise DockerProblem(
            f"no container {name_or_id}", hint="`harness ps` or `docker ps` lists them"
        ) from None
    except (APIError, requests.RequestException) as exc:
        raise DockerProblem(f"cannot list processes of {name_or_id}: {_explain(exc)}") from None
    titles = [str(t).upper() for t in top.get("Titles") or []]
    col = titles.index("PID") if "PID" in titles else 0
    return [int(row[col]) for row in top.get("Processes") or [] if str(row[col]).isdigit()]


def _ensure_image(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
    except ImageNotFound:
        if image.startswith("harness-"):
            hint = "build it with `make images` (scripts/build-images.sh), or pass --image IMAGE"
        else:
            hint = f"pull it with `docker pull {image}`, or pass --image IMAGE"
        raise DockerProblem(f"image {image} is not on this Docker host", hint=hint) from None
    except (APIError, requests.RequestException) as exc:
        raise DockerProblem(f"cannot inspect image {image}: {_explain(exc)}") from None


def _remove_quietly(container: Container) -> None:
    with contextlib.suppress(APIError, NotFound, requests.RequestException):
        container.remove(force=True, v=True)


def _create_problem(exc: APIError, c: ContainerSpec) -> DockerProblem:
    reason = _explain(exc)
    if exc.status_code == 409:
        return DockerProblem(
            f"a container named {c.name} already exists",
            hint=f"remove it with `harness down {c.labels.get(LABEL_RUN_ID, '')}` "
            f"or `docker rm -f {c.name}`",
        )
    if "could not select device driver" in reason or "nvidia" in reason.lower():
        return DockerProblem(
            f"Docker cannot give the container GPUs ({reason})",
            hint="install the NVIDIA Container Toolkit and restart dockerd, or plan on the CPU",
        )
    return DockerProblem(f"Docker refused to create container {c.name}: {reason}")


def _start_problem(exc: APIError, c: ContainerSpec) -> DockerProblem:
    reason = _explain(exc)
    limits, source = host_limits()
    name = refused_ulimit(reason, c.ulimits, limits)
    if name is not None:
        return ulimit_problem(name, c.ulimits[name], limits, source)
    if "could not select device driver" in reason:
        return DockerProblem(
            f"Docker cannot give the container GPUs ({reason})",
            hint="install the NVIDIA Container Toolkit and restart dockerd, or plan on the CPU",
        )
    if "address already in use" in reason:
        return DockerProblem(
            f"port of container {c.name} is already in use: {reason}",
            hint="pick another --port",
        )
    return DockerProblem(f"Docker could not start container {c.name}: {reason}")


# ---------------------------------------------------------------------------------------------
# ps / down


def _label_filter(run_id: str | None) -> dict[str, Any]:
    return {"label": [f"{LABEL_RUN_ID}={run_id}" if run_id else LABEL_RUN_ID]}


def _owner_alive(labels: Mapping[str, str]) -> bool | None:
    """Whether the harness process that started the container still runs (None: unknown)."""
    pid = labels.get(LABEL_OWNER_PID, "")
    if not pid.isdigit() or labels.get(LABEL_OWNER_HOST) != os.uname().nodename:
        return None
    return psutil.pid_exists(int(pid))


def docker_ps(client: docker.DockerClient | None = None) -> list[dict[str, Any]]:
    """Every harness container (running or not), found by label, oldest first.

    Keys: ``run_id``, ``name``, ``id``, ``status``, ``engine``, ``tp``, ``image``, ``run_dir``,
    ``created``, ``orphan`` (True when the harness process that started it is gone; None when
    that cannot be told, e.g. it was started by ``docker run`` or on another host)."""
    client = client or docker_client()
    try:
        containers = client.containers.list(all=True, filters=_label_filter(None))
    except (APIError, requests.RequestException) as exc:
        raise DockerProblem(f"cannot list containers: {_explain(exc)}") from None
    rows: list[dict[str, Any]] = []
    for container in containers:
        attrs = container.attrs
        labels: dict[str, str] = dict(attrs.get("Config", {}).get("Labels") or {})
        alive = _owner_alive(labels)
        tp = labels.get(LABEL_TP, "")
        rows.append(
            {
                "run_id": labels.get(LABEL_RUN_ID, ""),
                "name": str(container.name),
                "id": str(container.id)[:12],
                "status": str(attrs.get("State", {}).get("Status") or container.status),
                "engine": labels.get(LABEL_ENGINE, ""),
                "tp": int(tp) if tp.isdigit() else None,
                "image": str(attrs.get("Config", {}).get("Image", "")),
                "run_dir": labels.get(LABEL_RUN_DIR),
                "created": str(attrs.get("Created", "")),
                "orphan": None if alive is None else not alive,
            }
        )
    rows.sort(key=lambda row: row["created"])
    return rows


CONTAINER_LOG = "container.log"


def save_container_log(container: Container) -> Path | None:
    """Copy a container's whole output to ``<run dir>/container.log`` before it is removed
    (its Docker log goes with it). For containers nobody followed to the end: orphans and
    ``serve --detach`` runs. Best effort: returns the file, or None."""
    run_dir = (container.labels or {}).get(LABEL_RUN_DIR)
    if not run_dir or not os.path.isdir(run_dir):
        return None
    path = Path(run_dir) / CONTAINER_LOG
    try:
        with open(path, "wb") as out:
            for chunk in container.logs(stream=True, follow=False, stdout=True, stderr=True):
                out.write(chunk)
    except (OSError, APIError, requests.RequestException):
        return None
    return path


def docker_down(
    run_id: str | None = None,
    *,
    all_runs: bool = False,
    grace_s: float | None = None,
    client: docker.DockerClient | None = None,
) -> list[str]:
    """Stop (SIGTERM, then SIGKILL after the grace) and remove harness containers: the one of
    ``run_id``, or all of them with ``all_runs``. Returns the names removed. Containers are
    stopped in parallel so ``down --all`` takes one grace period, not one per container. Each
    container's output is saved to ``<run dir>/container.log`` first (when the run directory
    is on this host), and a background log follower of a ``serve --detach`` is ended after
    the last lines."""
    if not run_id and not all_runs:
        raise BadInput("name a run id, or use --all to stop every harness container")
    client = client or docker_client()
    try:
        containers = client.containers.list(all=True, filters=_label_filter(run_id))
    except (APIError, requests.RequestException) as exc:
        raise DockerProblem(f"cannot list containers: {_explain(exc)}") from None

    def down(container: Container) -> str:
        labels = container.labels or {}
        grace = grace_s
        if grace is None:
            try:
                grace = float(labels.get(LABEL_STOP_GRACE, "10"))
            except ValueError:
                grace = 10.0
        _stop_and_remove(container, grace, before_remove=save_container_log)
        run_dir = labels.get(LABEL_RUN_DIR)
        if run_dir and os.path.isdir(run_dir):
            stop_log_follower(Path(run_dir))
        return str(container.name)

    if not containers:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
        names = list(pool.map(down, containers))
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# Task containers: another command in a container made from a server's plan


#: Label marking a task container (``doctor``, ``shard``) apart from servers.
LABEL_TASK = "harness.task"


class TaskContainer:
    """A short-lived container created exactly like a plan's server (image, IPC, shm, caps,
    ulimits, network, GPUs, mounts, labels) but running ``argv``: ``harness doctor``'s probes
    run where the server will, ``harness shard`` saves with the server's engine. No port is
    published (it serves nothing). Use it as a context manager: it is removed on exit."""

    def __init__(self, client: docker.DockerClient, container: Container) -> None:
        self.client = client
        self.container = container
        self.name = str(container.name)

    @classmethod
    def start(
        cls,
        spec: LaunchSpec,
        argv: list[str],
        *,
        task: str,
        volumes: Mapping[str, tuple[str, str]] | None = None,
        drop_targets: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        client: docker.DockerClient | None = None,
    ) -> TaskContainer:
        """Create and start the task container; ``volumes`` add or replace mounts
        (``{host_path: (container_path, "ro"|"rw")}``, replacing any mount of the same target);
        ``drop_targets`` leaves mounts out (a run directory that must not be created)."""
        c = _require_container(spec)
        client = client or docker_client()
        _ensure_image(client, c.image)
        kwargs = create_kwargs(spec, caller_env=os.environ)
        kwargs.pop("ports", None)
        mounts: dict[str, dict[str, str]] = {
            source: mount
            for source, mount in kwargs["volumes"].items()
            if mount["bind"] not in drop_targets
        }
        for source, (target, mode) in (volumes or {}).items():
            for old in [s for s, m in mounts.items() if m["bind"] == target]:
                del mounts[old]
            mounts[source] = {"bind": target, "mode": mode}
        kwargs.update(
            name=f"{c.name}-{task}",
            entrypoint=[argv[0]],
            command=list(argv[1:]),
            volumes=mounts,
            environment={**kwargs["environment"], **(env or {})},
            labels={**kwargs["labels"], LABEL_TASK: task},
        )
        try:
            container = client.containers.create(**kwargs)
        except APIError as exc:
            raise _create_problem(exc, c) from None
        except requests.RequestException as exc:
            raise DockerProblem(
                f"creating container {kwargs['name']} failed: {_explain(exc)}"
            ) from None
        try:
            container.start()
        except BaseException as exc:
            _remove_quietly(container)
            if isinstance(exc, APIError):
                raise _start_problem(exc, c) from None
            if isinstance(exc, requests.RequestException):
                raise DockerProblem(
                    f"starting container {kwargs['name']} failed: {_explain(exc)}"
                ) from None
            raise
        return cls(client, container)

    def __enter__(self) -> TaskContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None when it is still running after ``timeout_s``."""
        try:
            result = self.container.wait(timeout=max(1, math.ceil(timeout_s)))
        except (requests.RequestException, APIError):
            return None
        except NotFound:
            return -1
        return int(result.get("StatusCode", -1))

    def output(self) -> str:
        """Everything the command wrote so far (stdout and stderr)."""
        try:
            data: bytes = self.container.logs(stdout=True, stderr=True)
        except (APIError, NotFound, requests.RequestException) as exc:
            return f"[harness] no logs: {_explain(exc)}"
        return data.decode("utf-8", errors="replace")

    def host_pid(self) -> int | None:
        """Host PID of the command (the init process's child)."""
        try:
            self.container.reload()
            init = int(self.container.attrs.get("State", {}).get("Pid") or 0)
        except (APIError, NotFound, requests.RequestException):
            return None
        if init <= 0:
            return None
        try:
            children = psutil.Process(init).children()
        except psutil.Error:
            return None
        return children[0].pid if children else init

    def exec(self, argv: list[str], timeout_s: float) -> tuple[int, str]:
        """Run ``argv`` inside (``docker exec``); ``(-1, why)`` when it failed to run or took
        longer than ``timeout_s`` (it is then left to die with the container)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                result = self.container.exec_run(argv, stdout=True, stderr=True)
                output = result.output if isinstance(result.output, bytes) else b""
                box["result"] = (int(result.exit_code or 0), output.decode(errors="replace"))
            except (APIError, NotFound, requests.RequestException) as exc:
                box["result"] = (-1, f"docker exec failed: {_explain(exc)}")

        thread = threading.Thread(target=run, name=f"exec-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        result: tuple[int, str] = box.get("result", (-1, f"no answer within {timeout_s:.0f} s"))
        return result

    def remove(self, grace_s: float = 2.0) -> None:
        """Stop (SIGTERM, SIGKILL after ``grace_s``) and remove; safe to call twice."""
        with contextlib.suppress(DockerProblem):
            _stop_and_remove(self.container, grace_s)


def docker_version(client: docker.DockerClient | None = None) -> str | None:
    """The Docker engine's version, or None when it cannot be asked."""
    try:
        client = client or docker_client(timeout_s=10)
        return str(client.version().get("Version"))
    except (DockerProblem, APIError, requests.RequestException):
        return None


def image_distribution_versions(
    image: str, distributions: list[str], *, timeout_s: float = 60.0
) -> dict[str, str]:
    """Versions of Python distributions installed in ``image`` (package metadata, read by the
    image's ``python3`` in a throwaway container with no network); ``{}`` when it cannot tell."""
    script = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for name in sys.argv[1:]:\n    try:\n        out[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError:\n        pass\nprint(json.dumps(out))\n"
    )
    try:
        client = docker_client(timeout_s=timeout_s)
        _ensure_image(client, image)
        container = client.containers.create(
            image,
            entrypoint=["python3", "-c", script],
            command=list(distributions),
            network_mode="none",
            labels={LABEL_TASK: "versions"},
        )
    except (DockerProblem, APIError, requests.RequestException):
        return {}
    try:
        container.start()
        container.wait(timeout=max(1, math.ceil(timeout_s)))
        text = container.logs(stdout=True, stderr=False).decode(errors="replace")
        data = json.loads(text.strip().splitlines()[-1])
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (APIError, NotFound, requests.RequestException, ValueError, IndexError):
        return {}
    finally:
        _remove_quietly(container)
