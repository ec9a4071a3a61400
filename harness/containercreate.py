"""A docker plan -> the keyword arguments of the Docker SDK's ``containers.create`` (pure).

:func:`create_kwargs` translates the plan's :class:`~harness.spec.ContainerSpec` (decided by
:mod:`harness.containerplan`) word for word: IPC, shm size, network, GPUs as device requests,
capabilities, ulimits, mounts, labels, the init process, never privileged. Ulimits and device
requests are plain mappings with the SDK's own keys (``Name``/``Soft``/``Hard``;
``Driver``/``Count``/``DeviceIDs``/``Capabilities``/``Options``); the runtime
(:mod:`harness.runtime.docker`, the only module importing the SDK) turns them into its types.
:func:`task_kwargs` does the same for a task container (``harness doctor``, ``harness shard``)
that runs another command in a container made from the same plan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from harness.errors import BadInput
from harness.render import PASSTHROUGH_ENV
from harness.spec import ContainerSpec, LaunchSpec

#: Labels the runtime adds at creation (not part of the plan): who started the container, so
#: ``docker_ps`` can tell orphans, and the stop grace ``docker_down`` should give it.
LABEL_OWNER_PID = "harness.owner_pid"
LABEL_OWNER_HOST = "harness.owner_host"
LABEL_STOP_GRACE = "harness.stop_grace_s"
#: Label marking a task container (``doctor``, ``shard``) apart from servers.
LABEL_TASK = "harness.task"


def require_container(spec: LaunchSpec) -> ContainerSpec:
    """The plan's container; :class:`BadInput` for a plan made without ``--runtime docker``."""
    if spec.container is None:
        raise BadInput("this plan has no container; plan it with --runtime docker")
    return spec.container


def device_requests(gpus: str | int | list[int] | None) -> list[dict[str, Any]]:
    """The plan's ``gpus`` (``"all"``, a count or device ids) as Docker device requests."""
    if gpus is None:
        return []
    request: dict[str, Any] = {"Driver": "", "Capabilities": [["gpu"]], "Options": {}}
    if isinstance(gpus, list):
        return [{**request, "Count": 0, "DeviceIDs": [str(i) for i in gpus]}]
    count = -1 if gpus == "all" else int(gpus)
    return [{**request, "Count": count, "DeviceIDs": []}]


def create_kwargs(
    spec: LaunchSpec, *, caller_env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for a docker plan (no I/O).

    ``caller_env`` passes the Hugging Face token through when the plan does not set it."""
    c = require_container(spec)
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
    ulimits = [{"Name": k, "Soft": v, "Hard": v} for k, v in c.ulimits.items()]
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
        "ulimits": ulimits or None,
        "volumes": {src: {"bind": v.bind, "mode": v.mode} for src, v in c.volumes.items()},
        "device_requests": device_requests(c.gpus) or None,
        "stop_signal": "SIGTERM",
        "detach": True,
    }
    if c.shm_size:
        kwargs["shm_size"] = c.shm_size
    if c.ports:
        kwargs["ports"] = {port: (ip, host_port) for port, (ip, host_port) in c.ports.items()}
    return kwargs


def task_kwargs(
    spec: LaunchSpec,
    argv: list[str],
    *,
    task: str,
    volumes: Mapping[str, tuple[str, str]] | None = None,
    drop_targets: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    caller_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`create_kwargs` for a task container running ``argv`` instead of the server: no
    port published, named ``<server name>-<task>``, labelled :data:`LABEL_TASK`. ``volumes``
    add or replace mounts (``{host_path: (container_path, "ro"|"rw")}``, replacing any mount of
    the same target); ``drop_targets`` leaves mounts out (a run directory that must not be
    created); ``env`` is added to the plan's environment."""
    kwargs = create_kwargs(spec, caller_env=caller_env)
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
        name=f"{require_container(spec).name}-{task}",
        entrypoint=[argv[0]],
        command=list(argv[1:]),
        volumes=mounts,
        environment={**kwargs["environment"], **(env or {})},
        labels={**kwargs["labels"], LABEL_TASK: task},
    )
    return kwargs
