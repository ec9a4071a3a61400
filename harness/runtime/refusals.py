"""Why Docker refused to create or start a container, in one line with the fix (pure).

The usual refusal is a ulimit above the host's hard limit. runc reports it by its Linux number
(``error setting rlimit type 8``); the host's limits come from ``/proc/<pid>/limits`` (of dockerd
when it can be read: containers inherit its limits; the runtime reads the file).
:func:`refused_ulimit` names the plan's limit a start error is about and :func:`ulimit_problem`
says which profile key to change, and to what. :func:`create_problem` and
:func:`start_problem` explain the rest: a name already taken, GPUs Docker cannot give, a port
in use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from harness.containerplan import LABEL_RUN_ID
from harness.errors import DockerProblem
from harness.spec import ContainerSpec

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


def _no_gpus(reason: str) -> DockerProblem:
    return DockerProblem(
        f"Docker cannot give the container GPUs ({reason})",
        hint="install the NVIDIA Container Toolkit and restart dockerd, or plan on the CPU",
    )


def create_problem(status_code: int | None, reason: str, c: ContainerSpec) -> DockerProblem:
    """Docker refused to create the container of ``c`` (HTTP ``status_code``, ``reason``)."""
    if status_code == 409:
        return DockerProblem(
            f"a container named {c.name} already exists",
            hint=f"remove it with `harness down {c.labels.get(LABEL_RUN_ID, '')}` "
            f"or `docker rm -f {c.name}`",
        )
    if "could not select device driver" in reason or "nvidia" in reason.lower():
        return _no_gpus(reason)
    return DockerProblem(f"Docker refused to create container {c.name}: {reason}")


def start_problem(
    reason: str, c: ContainerSpec, limits: Mapping[str, tuple[int, int]], source: str
) -> DockerProblem:
    """Docker refused to start the container of ``c``; ``limits`` are the host's (read from
    ``source``), to name a refused ulimit."""
    name = refused_ulimit(reason, c.ulimits, limits)
    if name is not None:
        return ulimit_problem(name, c.ulimits[name], limits, source)
    if "could not select device driver" in reason:
        return _no_gpus(reason)
    if "address already in use" in reason:
        return DockerProblem(
            f"port of container {c.name} is already in use: {reason}",
            hint="pick another --port",
        )
    return DockerProblem(f"Docker could not start container {c.name}: {reason}")
