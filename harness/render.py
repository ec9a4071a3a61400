"""Render a ``--runtime docker`` LaunchSpec for people and tools without harness (pure).

``harness plan --format docker`` prints :func:`render_docker_run`, a copy-pasteable
``docker run`` command; ``--format compose`` prints :func:`render_compose`, a Docker Compose
file (``docker compose -f FILE up`` or Debian's ``docker-compose -f FILE up``). Both say exactly
what :mod:`harness.runtime.docker` does with the same plan, so a plan can be shared, reviewed
and run without harness. A multi-node plan (``--nodes``) renders one ``docker run`` per node,
or one Compose service per node (``docker compose up <service>`` on that node), each with the
host network and its node's environment. ``--format sbatch`` prints :func:`render_sbatch`, a
SLURM batch script that runs ``harness serve`` for the plan on the allocation.

Values of secret-looking variables (``HF_TOKEN``, ``*_API_KEY``, ...) are never written out:
the command passes them through from the caller's environment (``-e HF_TOKEN``), the compose
file leaves them empty so Compose takes them from the shell.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml

from harness.errors import PlanError
from harness.spec import ContainerSpec, LaunchSpec

#: Variables passed through from the caller's environment when set (never stored in a plan):
#: what a container needs to download gated models.
PASSTHROUGH_ENV: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

_SECRET = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)", re.I)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's value must not be printed."""
    return bool(_SECRET.search(name))


def _container(spec: LaunchSpec) -> ContainerSpec:
    if spec.container is None:
        raise PlanError(
            "this plan has no container (it was planned for --runtime local)",
            hint="add --runtime docker",
        )
    return spec.container


def _gpus_flag(gpus: str | int | list[int]) -> str:
    if isinstance(gpus, list):
        # The CLI parses --gpus as CSV: a device list must be quoted inside the value.
        return '"device=' + ",".join(str(i) for i in gpus) + '"'
    return str(gpus)


def _stop_timeout(spec: LaunchSpec) -> int:
    return max(1, round(spec.deadlines.stop_grace_s))


def _docker_run_groups(spec: LaunchSpec, *, detach: bool, remove: bool) -> list[list[str]]:
    """``docker run`` as groups: the command, one group per option, then image + arguments."""
    c = _container(spec)
    groups: list[list[str]] = [["docker", "run"]]
    if detach:
        groups.append(["--detach"])
    if remove:
        groups.append(["--rm"])
    groups.append(["--name", c.name])
    if c.init:
        groups.append(["--init"])
    if c.ipc_mode:
        groups.append(["--ipc", c.ipc_mode])
    if c.shm_size:
        groups.append(["--shm-size", c.shm_size])
    groups.append(["--network", c.network_mode])
    for container_port, (host_ip, host_port) in c.ports.items():
        groups.append(["--publish", f"{host_ip}:{host_port}:{container_port}"])
    for cap in c.cap_add:
        groups.append(["--cap-add", cap])
    for name, limit in c.ulimits.items():
        groups.append(["--ulimit", f"{name}={limit}"])
    if c.gpus is not None:
        groups.append(["--gpus", _gpus_flag(c.gpus)])
    for source, vol in c.volumes.items():
        groups.append(["--volume", f"{source}:{vol.bind}:{vol.mode}"])
    for key, value in c.labels.items():
        groups.append(["--label", f"{key}={value}"])
    for key, value in spec.env.items():
        groups.append(["--env", key if is_secret_name(key) else f"{key}={value}"])
    for key in PASSTHROUGH_ENV:
        if key not in spec.env:
            groups.append(["--env", key])
    groups.append(["--stop-timeout", str(_stop_timeout(spec))])
    groups.append(["--entrypoint", spec.argv[0]])
    groups.append([c.image, *spec.argv[1:]])
    return groups


def secret_variables(spec: LaunchSpec) -> list[str]:
    """The plan's secret variables: a rendered command takes them from the caller's shell."""
    return sorted(key for key in spec.env if is_secret_name(key))


def _secrets_comment(spec: LaunchSpec) -> str:
    names = secret_variables(spec)
    if not names:
        return ""
    return (
        f"# export {' '.join(names)} in your shell first: the command passes "
        f"{'it' if len(names) == 1 else 'them'} from there (never written here)\n"
    )


def node_launch_spec(spec: LaunchSpec, rank: int) -> LaunchSpec:
    """One node of a multi-node plan as a one-machine plan (its argv, env and container)."""
    node = spec.nodes[rank]
    return spec.model_copy(
        update={"argv": node.argv, "env": node.env, "container": node.container, "nodes": []}
    )


def _node_title(spec: LaunchSpec, rank: int) -> str:
    node = spec.nodes[rank]
    return f"{node.host} (rank {rank}, {node.role}, {node.address})"


def docker_run_argv(spec: LaunchSpec, *, detach: bool = False, remove: bool = True) -> list[str]:
    """The ``docker run`` command as an argument list (what :func:`render_docker_run` quotes)."""
    groups = _docker_run_groups(spec, detach=detach, remove=remove)
    return [token for group in groups for token in group]


def render_docker_run(spec: LaunchSpec) -> str:
    """A copy-pasteable ``docker run`` command (one option per line) for a docker plan.

    It runs in the foreground and removes the container on exit (``--rm``); add ``--detach``
    to run it in the background.
    """
    if spec.nodes:
        blocks = [
            f"# on {_node_title(spec, rank)}\n" + render_docker_run(node_launch_spec(spec, rank))
            for rank in range(len(spec.nodes))
        ]
        return "\n".join(blocks)
    groups = _docker_run_groups(spec, detach=False, remove=True)
    lines = [shlex.join(groups[0])] + ["  " + shlex.join(group) for group in groups[1:]]
    return _secrets_comment(spec) + " \\\n".join(lines) + "\n"


def _literal(value: str) -> str:
    """Compose interpolates ``$VAR`` in values; ``$$`` is a literal dollar."""
    return value.replace("$", "$$")


def compose_dict(spec: LaunchSpec) -> dict[str, Any]:
    """The Compose file as a mapping (what :func:`render_compose` dumps): one service, or one
    per node of a multi-node plan (named ``node<rank>-<host>``)."""
    if not spec.nodes:
        service, named = _compose_service(spec)
        services: dict[str, dict[str, Any]] = {str(spec.engine): service}
    else:
        services, named = {}, []
        for rank, node in enumerate(spec.nodes):
            service, more = _compose_service(node_launch_spec(spec, rank))
            services[compose_service_name(rank, node.host)] = service
            named += [n for n in more if n not in named]
    doc: dict[str, Any] = {"services": services}
    if named:
        # ``name`` keeps the volume shared across projects (no project-name prefix).
        doc["volumes"] = {name: {"name": name} for name in named}
    return doc


def compose_service_name(rank: int, host: str) -> str:
    """A node's Compose service: ``node0-gpu7`` (Compose's allowed characters)."""
    return f"node{rank}-" + re.sub(r"[^a-z0-9_-]", "-", host.lower())


def _compose_service(spec: LaunchSpec) -> tuple[dict[str, Any], list[str]]:
    """One service of the Compose file and the named volumes it uses."""
    c = _container(spec)
    service: dict[str, Any] = {
        "image": c.image,
        "container_name": c.name,
        "init": c.init,
    }
    if c.ipc_mode:
        service["ipc"] = c.ipc_mode
    if c.shm_size:
        service["shm_size"] = c.shm_size
    service["network_mode"] = c.network_mode
    if c.ports:
        service["ports"] = [
            f"{host_ip}:{host_port}:{container_port}"
            for container_port, (host_ip, host_port) in c.ports.items()
        ]
    if c.cap_add:
        service["cap_add"] = list(c.cap_add)
    if c.ulimits:
        service["ulimits"] = dict(c.ulimits)
    named: list[str] = []
    service["volumes"] = []
    for source, vol in c.volumes.items():
        service["volumes"].append(f"{source}:{vol.bind}:{vol.mode}")
        if not source.startswith("/"):
            named.append(source)
    service["labels"] = dict(c.labels)
    environment: dict[str, str | None] = {
        key: (None if is_secret_name(key) else _literal(value)) for key, value in spec.env.items()
    }
    for key in PASSTHROUGH_ENV:
        environment.setdefault(key, None)
    service["environment"] = environment
    service["entrypoint"] = [_literal(arg) for arg in spec.argv]
    service["stop_grace_period"] = f"{_stop_timeout(spec)}s"
    if c.gpus is not None:
        device: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
        if isinstance(c.gpus, list):
            device["device_ids"] = [str(i) for i in c.gpus]
        else:
            device["count"] = c.gpus
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return service, named


def render_compose(spec: LaunchSpec) -> str:
    """A Docker Compose file for a docker plan (Compose Specification, no ``version`` key)."""
    if spec.nodes:
        run = "".join(
            f"#   on {_node_title(spec, rank)}: docker compose -f FILE up "
            f"{compose_service_name(rank, node.host)}\n"
            for rank, node in enumerate(spec.nodes)
        )
        run = f"# {len(spec.nodes)} nodes, one service each (host network):\n" + run
    else:
        run = "# run: docker compose -f FILE up   (or Debian's docker-compose -f FILE up)\n"
    header = (
        f"# harness plan {spec.run_id}: {spec.engine} TP={spec.tp}, profiles "
        f"{','.join(spec.profiles)}\n"
        + run
        + f"# health: {spec.health_url}\n"
        + _secrets_comment(spec)
    )
    body = yaml.safe_dump(compose_dict(spec), sort_keys=False, default_flow_style=False, width=1000)
    return header + body


def render_sbatch(
    spec: LaunchSpec,
    serve_argv: list[str],
    *,
    nodes: int = 1,
    output_dir: str,
) -> str:
    """A SLURM batch script that runs ``harness serve`` for this plan on the allocation (the
    watchdog and its incidents included). ``serve_argv`` is the whole ``harness serve`` command
    (interpreter first); with ``nodes`` > 1 the job asks for that many nodes and harness, on
    the first, starts the others over ssh: ``--node-hosts`` is the allocation's host list.
    The server listens where the plan says (``--host``; 127.0.0.1 is the node itself)."""
    local_ranks = max(1, spec.tp // max(1, nodes))
    lines = [
        "#!/bin/bash",
        f"# harness plan {spec.run_id} as a SLURM job: `harness serve` on the allocation "
        f"({spec.engine}, TP={spec.tp}, {nodes} node{'s' if nodes > 1 else ''}, profiles "
        f"{','.join(spec.profiles)}). Submit: sbatch FILE; stop: scancel JOB (harness stops "
        "the server).",
        f"#SBATCH --job-name=harness-{spec.engine}-tp{spec.tp}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        # A core per rank of the node: what the plan binds on the CPU backend.
        f"#SBATCH --cpus-per-task={local_ranks}",
    ]
    if spec.device == "cuda":
        lines.append(f"#SBATCH --gres=gpu:{local_ranks}")
    lines += [
        # No --output: slurm-<job>.out lands where the job is submitted (a directory that
        # exists); harness writes its run under the runs directory.
        f"# harness writes its run directory under {output_dir}",
        "##SBATCH --partition=PARTITION   (remove one # and set)",
        "##SBATCH --time=HH:MM:SS",
        "set -euo pipefail",
    ]
    command = shlex.join(serve_argv)
    if nodes > 1:
        lines += [
            "# The nodes: the first is the head; harness reaches the others over ssh.",
            'HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)',
            f'exec {command} --node-hosts "$HOSTS"',
        ]
    else:
        lines.append(f"exec {command}")
    return "\n".join(lines) + "\n"
