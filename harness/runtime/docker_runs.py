"""Harness containers on this Docker host, found by their labels: ``harness ps`` and ``harness
down``. Containers whose harness process was killed (orphans) are found too. The Docker SDK is
reached through :mod:`harness.runtime.docker` (the only module importing it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from harness.containercreate import LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_STOP_GRACE
from harness.containerplan import LABEL_ENGINE, LABEL_RUN_DIR, LABEL_RUN_ID, LABEL_TP
from harness.errors import BadInput, DockerProblem
from harness.runtime.docker import (
    Container,
    DockerClient,
    container_exec,
    container_pids,
    docker_client,
    harness_containers,
    sdk_errors,
    stop_and_remove,
)
from harness.runtime.docker_logs import stop_log_follower


def _owner_alive(labels: Mapping[str, str]) -> bool | None:
    """Whether the harness process that started the container still runs (None: unknown)."""
    pid = labels.get(LABEL_OWNER_PID, "")
    if not pid.isdigit() or labels.get(LABEL_OWNER_HOST) != os.uname().nodename:
        return None
    return psutil.pid_exists(int(pid))


def docker_ps(client: DockerClient | None = None) -> list[dict[str, Any]]:
    """Every harness container (running or not), found by label, oldest first.

    Keys: ``run_id``, ``name``, ``id``, ``status``, ``engine``, ``tp``, ``image``, ``run_dir``,
    ``created``, ``orphan`` (True when the harness process that started it is gone; None when
    that cannot be told, e.g. it was started by ``docker run`` or on another host)."""
    containers = harness_containers(client or docker_client())
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
        with open(path, "wb") as out, sdk_errors():
            for chunk in container.logs(stream=True, follow=False, stdout=True, stderr=True):
                out.write(chunk)
    except (OSError, DockerProblem):
        return None
    return path


def docker_down(
    run_id: str | None = None,
    *,
    all_runs: bool = False,
    grace_s: float | None = None,
    client: DockerClient | None = None,
) -> list[str]:
    """Stop (SIGTERM, then SIGKILL after the grace) and remove harness containers: the one of
    ``run_id``, or all of them with ``all_runs``. Returns the names removed. Containers are
    stopped in parallel so ``down --all`` takes one grace period, not one per container. Each
    container's output is saved to ``<run dir>/container.log`` first (when the run directory
    is on this host), and a background log follower of a ``serve --detach`` is ended after
    the last lines."""
    if not run_id and not all_runs:
        raise BadInput("name a run id, or use --all to stop every harness container")
    containers = harness_containers(client or docker_client(), run_id)

    def down(container: Container) -> str:
        labels = container.labels or {}
        grace = grace_s
        if grace is None:
            try:
                grace = float(labels.get(LABEL_STOP_GRACE, "10"))
            except ValueError:
                grace = 10.0
        run_dir = labels.get(LABEL_RUN_DIR)

        def before_remove(stopped: Container) -> None:
            # The follower copies the container's last lines (an engine prints some at exit)
            # once it has stopped; removing the container first cuts its stream short.
            if run_dir and os.path.isdir(run_dir):
                stop_log_follower(Path(run_dir))
            save_container_log(stopped)

        stop_and_remove(container, grace, before_remove=before_remove)
        return str(container.name)

    if not containers:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
        names = list(pool.map(down, containers))
    return sorted(names)


def container_access(
    name_or_id: str,
) -> tuple[list[int], Callable[[Sequence[str], float], tuple[int, str]]]:
    """A running container (any, not only harness's) for ``harness dump --container``: the
    host pids of its processes and a way to run commands inside it (one Docker client)."""
    client = docker_client()
    return container_pids(name_or_id, client), container_exec(name_or_id, client)
