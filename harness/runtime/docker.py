"""The Docker runtime: a LaunchSpec's server as one container (the only module importing docker).

:class:`DockerRuntime` creates the container exactly as the plan says
(:func:`harness.containercreate.create_kwargs`; never privileged), starts it, and follows its log
stream into ``runs/<run-id>/server.log`` (:mod:`harness.runtime.docker_logs`). The returned
:class:`DockerHandle` reports HOST pids of the container's processes, so py-spy and /proc work
from the host unchanged, and runs commands inside the container
(:meth:`DockerHandle.exec_in_container`) for captures that need it. A refused setting (usually
a ulimit above the daemon's hard limit) removes the half-created container and raises
:class:`~harness.errors.DockerProblem` naming the setting and the fix
(:mod:`harness.runtime.refusals`).

This module is also the SDK boundary of the other Docker modules (``docker_logs``,
``docker_runs``: ps/down, ``docker_tasks``: doctor/shard containers), which never import the SDK:
:func:`sdk_errors` turns its errors into :class:`~harness.errors.DockerProblem`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import psutil
import requests
from docker import DockerClient as DockerClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container as Container
from docker.types import DeviceRequest, Ulimit

from harness import procgroup
from harness.containercreate import create_kwargs, require_container
from harness.containerplan import LABEL_RUN_ID
from harness.errors import DockerProblem
from harness.rundir import RunDir
from harness.runtime.docker_logs import LogFollower, spawn_log_follower, start_follower
from harness.runtime.refusals import create_problem, parse_proc_limits, start_problem
from harness.spec import ContainerSpec, LaunchSpec

#: Seconds any single Docker API call may take (stop/wait add their own grace on top).
API_TIMEOUT_S = 60.0


def explain(exc: BaseException) -> str:
    """An SDK error in one line (the Docker API's own explanation when there is one)."""
    text = str(exc.explanation or exc) if isinstance(exc, APIError) else str(exc)
    return re.sub(r"\s+", " ", text).strip()


class ContainerGone(DockerProblem):
    """The container does not exist (any more)."""


@contextlib.contextmanager
def sdk_errors(what: str = "") -> Iterator[None]:
    """Inside the block, an SDK error becomes :class:`DockerProblem` (``"what: reason"``, or
    the reason alone), a container that is not there :class:`ContainerGone`."""
    try:
        yield
    except (DockerException, requests.RequestException) as exc:
        message = f"{what}: {explain(exc)}" if what else explain(exc)
        raise (ContainerGone if isinstance(exc, NotFound) else DockerProblem)(message) from None


def docker_client(timeout_s: float = API_TIMEOUT_S) -> DockerClient:
    """A client for the Docker engine of the environment (``DOCKER_HOST`` or the local socket);
    :class:`DockerProblem` with what to do when it cannot be reached."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=math.ceil(timeout_s))
        client.ping()
    except (DockerException, requests.RequestException, OSError) as exc:
        reason = explain(exc)
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


def docker_version(client: DockerClient | None = None) -> str | None:
    """The Docker engine's version, or None when it cannot be asked."""
    try:
        client = client or docker_client(timeout_s=10)
        return str(client.version().get("Version"))
    except (DockerProblem, APIError, requests.RequestException):
        return None


def host_limits() -> tuple[dict[str, tuple[int, int]], str]:
    """The limits containers inherit: those of a local dockerd if readable, else this
    process's. Returns the limits and where they were read."""
    candidates: list[tuple[str, str]] = []
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == "dockerd":
            where = f"/proc/{proc.pid}/limits"
            candidates.append((where, f"dockerd's, {where}"))
            break
    candidates.append(("/proc/self/limits", "/proc/self/limits"))
    for path, label in candidates:
        try:
            return parse_proc_limits(Path(path).read_text()), label
        except OSError:
            continue
    return {}, "unknown"


# ---------------------------------------------------------------------------------------------
# Containers: create, stop, list, run commands inside


def ensure_image(client: DockerClient, image: str) -> None:
    """:class:`DockerProblem` saying how to get ``image`` when the Docker host lacks it."""
    try:
        client.images.get(image)
    except ImageNotFound:
        if image.startswith("harness-"):
            hint = "build it with `make images` (scripts/build-images.sh), or pass --image IMAGE"
        else:
            hint = f"pull it with `docker pull {image}`, or pass --image IMAGE"
        raise DockerProblem(f"image {image} is not on this Docker host", hint=hint) from None
    except (APIError, requests.RequestException) as exc:
        raise DockerProblem(f"cannot inspect image {image}: {explain(exc)}") from None


def create_started(client: DockerClient, kwargs: Mapping[str, Any], c: ContainerSpec) -> Container:
    """Create and start a container from ``kwargs`` (:mod:`harness.containercreate`, made for
    ``c``); on any failure the half-created container is removed and :class:`DockerProblem`
    says why and what to change."""
    sdk = dict(kwargs)
    # Plain mappings with the SDK's keys -> the SDK's types.
    sdk["ulimits"] = [Ulimit(**u) for u in sdk.get("ulimits") or ()] or None
    sdk["device_requests"] = [DeviceRequest(**d) for d in sdk.get("device_requests") or ()] or None
    name = kwargs.get("name") or c.name
    try:
        container = client.containers.create(**sdk)
    except APIError as exc:
        raise create_problem(exc.status_code, explain(exc), c) from None
    except requests.RequestException as exc:
        raise DockerProblem(f"creating container {name} failed: {explain(exc)}") from None
    try:
        container.start()
    except BaseException as exc:
        remove_quietly(container)
        if isinstance(exc, APIError):
            raise start_problem(explain(exc), c, *host_limits()) from None
        if isinstance(exc, requests.RequestException):
            raise DockerProblem(f"starting container {name} failed: {explain(exc)}") from None
        raise
    return container


def remove_quietly(container: Container) -> None:
    """Remove a container (and its anonymous volumes) whatever state it is in; never raises."""
    with contextlib.suppress(APIError, NotFound, requests.RequestException):
        container.remove(force=True, v=True)


def stop_and_remove(
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
            f"could not remove container {container.name}: {explain(exc)}"
        ) from None
    return code


def exec_with_deadline(
    container: Container, argv: Sequence[str], timeout_s: float
) -> tuple[int, str]:
    """Run ``argv`` inside ``container`` (``docker exec``, stdout and stderr together) for at
    most ``timeout_s``. Returns ``(exit code, output)``; ``(-1, why)`` when it could not run or
    did not finish in time (what it printed before is kept, and the command is killed from the
    host when this process may: Docker's API cannot stop an exec)."""
    if container.client is None:
        return -1, "docker exec failed: the container has no client"
    api = container.client.api
    try:
        exec_id = api.exec_create(container.id, list(argv), stdout=True, stderr=True)["Id"]
    except (APIError, requests.RequestException) as exc:
        return -1, f"docker exec failed: {explain(exc)}"
    chunks: list[bytes] = []
    failed: list[str] = []

    def read() -> None:
        try:
            for chunk in api.exec_start(exec_id, stream=True):
                chunks.append(chunk)
        except (APIError, requests.RequestException) as exc:
            failed.append(f"docker exec failed: {explain(exc)}")

    thread = threading.Thread(target=read, name=f"exec-{container.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    output = b"".join(chunks).decode("utf-8", errors="replace")
    if thread.is_alive():
        with contextlib.suppress(APIError, requests.RequestException):
            pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
            if pid > 0:
                procgroup.stop_tree(pid, grace_s=1.0, kill_wait_s=2.0)
        return -1, output + f"no answer within {timeout_s:.0f} s"
    if failed:
        return -1, output + failed[0]
    try:
        code = api.exec_inspect(exec_id).get("ExitCode")
    except (APIError, requests.RequestException) as exc:
        return -1, output + f"docker exec failed: {explain(exc)}"
    return (int(code) if code is not None else -1), output


def harness_containers(client: DockerClient, run_id: str | None = None) -> list[Container]:
    """Harness containers (running or not) found by label: those of ``run_id``, or all."""
    label = f"{LABEL_RUN_ID}={run_id}" if run_id else LABEL_RUN_ID
    with sdk_errors("cannot list containers"):
        found: list[Container] = client.containers.list(all=True, filters={"label": [label]})
    return found


def _pid_column(top: Mapping[str, Any], default: int | None) -> list[int]:
    titles = [str(t).upper() for t in top.get("Titles") or []]
    col = titles.index("PID") if "PID" in titles else default
    if col is None:
        return []
    return [int(row[col]) for row in top.get("Processes") or [] if str(row[col]).isdigit()]


def top_pids(container: Container) -> list[int]:
    """Host pids from ``docker top`` (what works when /proc of the daemon's pid namespace is
    not ours); empty when Docker cannot say."""
    try:
        return _pid_column(container.top(), None)
    except (APIError, NotFound, requests.RequestException):
        return []


def _get(client: DockerClient, name_or_id: str) -> Container:
    try:
        return client.containers.get(name_or_id)
    except NotFound:
        raise DockerProblem(
            f"no container {name_or_id}", hint="`harness ps` or `docker ps` lists them"
        ) from None
    except (APIError, requests.RequestException) as exc:
        raise DockerProblem(f"cannot inspect container {name_or_id}: {explain(exc)}") from None


def container_pids(name_or_id: str, client: DockerClient | None = None) -> list[int]:
    """Host PIDs of every process in a container (``docker top``), init process included;
    what py-spy on the host needs to dump processes inside it."""
    container = _get(client or docker_client(), name_or_id)
    with sdk_errors(f"cannot list processes of {name_or_id}"):
        top = container.top(ps_args="-eo pid")
    return _pid_column(top, 0)


def container_exec(
    name_or_id: str, client: DockerClient | None = None
) -> Callable[[Sequence[str], float], tuple[int, str]]:
    """Runs commands inside a running container (any, not only harness's): the
    ``(argv, timeout_s) -> (exit code, output)`` of :func:`exec_with_deadline`."""
    container = _get(client or docker_client(), name_or_id)
    return lambda argv, timeout_s: exec_with_deadline(container, argv, timeout_s)


# ---------------------------------------------------------------------------------------------
# The runtime and its handle


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

    def root_pid(self) -> int | None:
        """Host PID of the engine's main process: PID 1's child when an init process runs."""
        pid = self.container_pid()
        if pid is None:
            return None
        if not require_container(self.spec).init:
            return pid
        try:
            children = psutil.Process(pid).children()
        except psutil.Error:
            tops = top_pids(self.container)
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
            return [p for p in top_pids(self.container) if p != init]

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
                code = stop_and_remove(
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
        process (:func:`~harness.runtime.docker_logs.spawn_log_follower`), for a caller that
        exits while the container keeps running (``serve --detach``). It goes on exactly where
        this handle's follower stopped and ends with the container; its pid is recorded as
        ``log_follower_pid`` in state.json for ``docker_down``. Returns the pid, or None when
        there was nothing to hand over (no follower here, or the container is gone: its last
        lines are drained)."""
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

    def exec_in_container(self, argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
        """Run ``argv`` inside the server's container within ``timeout_s`` (``docker exec``):
        ``(exit code, output)``, ``(-1, why)`` when it could not run or did not finish in
        time (:func:`exec_with_deadline`). Captures inside the container go through it."""
        return exec_with_deadline(self.container, argv, timeout_s)

    def describe(self) -> str:
        """``container NAME (ID) image IMAGE, host pid N``."""
        c = require_container(self.spec)
        root = self.root_pid() if not self._removed else None
        pid = f", host pid {root}" if root else ""
        return f"container {self.name} ({self.id[:12]}) image {c.image}{pid}"


class DockerRuntime:
    """Starts a LaunchSpec planned with ``--runtime docker`` as a container."""

    def __init__(
        self,
        client: DockerClient | None = None,
        *,
        caller_env: Mapping[str, str] | None = None,
        follow_logs: bool = True,
    ) -> None:
        self._client = client
        self._caller_env = dict(os.environ if caller_env is None else caller_env)
        self._follow_logs = follow_logs

    @property
    def client(self) -> DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def start(self, spec: LaunchSpec, run: RunDir) -> DockerHandle:
        """Create and start the container and begin copying its output to ``server.log``.
        Returns at once (the caller waits for health). Raises :class:`DockerProblem` when Docker
        is unreachable, the image is missing or the host refuses a setting; no container is
        left behind then."""
        c = require_container(spec)
        client = self.client
        run.create()
        ensure_image(client, c.image)
        container = create_started(client, create_kwargs(spec, caller_env=self._caller_env), c)
        follower = start_follower(container, run.server_log, explain) if self._follow_logs else None
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
        found = harness_containers(self.client, spec.run_id)
        if not found:
            raise DockerProblem(
                f"no container for run {spec.run_id}", hint="`harness ps` lists the running ones"
            )
        follower = start_follower(found[0], run.server_log, explain) if follow_logs else None
        return DockerHandle(spec, run, found[0], follower)
