"""Other commands in containers made from a server's plan (``harness doctor``, ``harness
shard``), and what an image holds. The Docker SDK is reached through
:mod:`harness.runtime.docker` (the only module importing it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping

import psutil

from harness.containercreate import LABEL_TASK, require_container, task_kwargs
from harness.errors import DockerProblem
from harness.runtime.docker import (
    Container,
    ContainerGone,
    DockerClient,
    create_started,
    docker_client,
    ensure_image,
    exec_with_deadline,
    remove_quietly,
    sdk_errors,
    stop_and_remove,
)
from harness.spec import ContainerSpec, LaunchSpec


class TaskContainer:
    """A short-lived container created exactly like a plan's server (image, IPC, shm, caps,
    ulimits, network, GPUs, mounts, labels) but running ``argv``: ``harness doctor``'s probes
    run where the server will, ``harness shard`` saves with the server's engine. No port is
    published (it serves nothing). Use it as a context manager: it is removed on exit."""

    def __init__(self, client: DockerClient, container: Container) -> None:
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
        client: DockerClient | None = None,
    ) -> TaskContainer:
        """Create and start the task container; ``volumes`` add or replace mounts
        (``{host_path: (container_path, "ro"|"rw")}``, replacing any mount of the same target);
        ``drop_targets`` leaves mounts out (a run directory that must not be created)."""
        c = require_container(spec)
        client = client or docker_client()
        ensure_image(client, c.image)
        kwargs = task_kwargs(
            spec,
            argv,
            task=task,
            volumes=volumes,
            drop_targets=drop_targets,
            env=env,
            caller_env=os.environ,
        )
        return cls(client, create_started(client, kwargs, c))

    def __enter__(self) -> TaskContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def wait(self, timeout_s: float) -> int | None:
        """The exit code (-1: the container is gone), or None when it is still running after
        ``timeout_s``."""
        return _wait(self.container, timeout_s)

    def output(self) -> str:
        """Everything the command wrote so far (stdout and stderr)."""
        try:
            return _output(self.container)
        except DockerProblem as exc:
            return f"[harness] no logs: {exc.message}"

    def host_pid(self) -> int | None:
        """Host PID of the command (the init process's child)."""
        try:
            with sdk_errors():
                self.container.reload()
            init = int(self.container.attrs.get("State", {}).get("Pid") or 0)
        except DockerProblem:
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
        longer than ``timeout_s``."""
        return exec_with_deadline(self.container, argv, timeout_s)

    def remove(self, grace_s: float = 2.0) -> None:
        """Stop (SIGTERM, SIGKILL after ``grace_s``) and remove; safe to call twice."""
        with contextlib.suppress(DockerProblem):
            stop_and_remove(self.container, grace_s)


def _wait(container: Container, timeout_s: float) -> int | None:
    try:
        with sdk_errors():
            result = container.wait(timeout=max(1, math.ceil(timeout_s)))
    except ContainerGone:
        return -1
    except DockerProblem:
        return None
    return int(result.get("StatusCode", -1))


def _output(container: Container, *, stderr: bool = True) -> str:
    with sdk_errors():
        data: bytes = container.logs(stdout=True, stderr=stderr)
    return data.decode("utf-8", errors="replace")


_VERSIONS_SCRIPT = (
    "import json, sys\nfrom importlib import metadata\nout = {}\n"
    "for name in sys.argv[1:]:\n    try:\n        out[name] = metadata.version(name)\n"
    "    except metadata.PackageNotFoundError:\n        pass\nprint(json.dumps(out))\n"
)


def image_distribution_versions(
    image: str, distributions: list[str], *, timeout_s: float = 60.0
) -> dict[str, str]:
    """Versions of Python distributions installed in ``image`` (package metadata, read by the
    image's ``python3`` in a throwaway container with no network); ``{}`` when it cannot tell."""
    kwargs = {
        "image": image,
        "entrypoint": ["python3", "-c", _VERSIONS_SCRIPT],
        "command": list(distributions),
        "network_mode": "none",
        "labels": {LABEL_TASK: "versions"},
    }
    try:
        client = docker_client(timeout_s=timeout_s)
        ensure_image(client, image)
        container = create_started(client, kwargs, ContainerSpec(image=image, name=image))
    except DockerProblem:
        return {}
    try:
        _wait(container, timeout_s)
        text = _output(container, stderr=False)
        data = json.loads(text.strip().splitlines()[-1])
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (DockerProblem, ValueError, IndexError):
        return {}
    finally:
        remove_quietly(container)
