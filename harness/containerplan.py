"""The container part of a plan (``--runtime docker``): profile options -> ContainerSpec (pure).

:func:`container_spec` decides everything about the server's container that the field guides
care about: IPC (``host``, or a private namespace with a large ``/dev/shm``), network (``host``,
or a bridge publishing the port on 127.0.0.1 only), GPUs as device requests, capabilities
(``SYS_PTRACE`` only when a profile asks), ulimits, mounts and labels. It never asks for
``--privileged``. The runtime (:mod:`harness.runtime.docker`) and the renderers
(:mod:`harness.render`) only translate the result; they decide nothing.

Mounts keep paths identical inside and outside the container (the model directory read-only,
the run directory read-write), so the engine's argv is the same for every runtime and files the
engine writes (``NCCL_DEBUG_FILE``, traces) land in ``runs/<run-id>/`` on the host.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Literal, Protocol

from harness.errors import PlanError
from harness.spec import ContainerSpec, VolumeSpec

#: Default image per (engine, device). ``harness-*`` images are built by ``make images``
#: (``scripts/build-images.sh``): the official vLLM / LMDeploy images plus py-spy, procps and
#: gdb, and a vLLM CPU image (which also carries harness, for the ``sim`` engine).
VLLM_CPU_IMAGE = "harness-vllm-cpu:0.32.0"
DEFAULT_IMAGES: dict[tuple[str, str], str] = {
    ("vllm", "cuda"): "harness-vllm:v0.32.0",
    ("vllm", "cpu"): VLLM_CPU_IMAGE,
    ("lmdeploy", "cuda"): "harness-lmdeploy:v0.18.0-cu12",
    ("sim", "cpu"): VLLM_CPU_IMAGE,
    ("sim", "cuda"): VLLM_CPU_IMAGE,
}

#: How the engines spell their names in messages.
ENGINE_NAMES = {"vllm": "vLLM", "lmdeploy": "LMDeploy", "sim": "the simulated engine"}

#: Named volumes for caches that should outlive a run (model downloads, vLLM's compile cache).
HF_CACHE_VOLUME = "harness-hf-cache"
VLLM_CACHE_VOLUME = "harness-vllm-cache"
HF_CACHE_TARGET = "/root/.cache/huggingface"
VLLM_CACHE_TARGET = "/root/.cache/vllm"

#: ``/dev/shm`` size when IPC is private and no profile sets one: Docker's 64 MiB default
#: makes NCCL and vLLM's shared-memory broadcast fail or hang with TP > 1.
DEFAULT_SHM_SIZE = "16g"

#: Labels every harness container carries; ``harness ps`` / ``down`` find containers by them.
LABEL_RUN_ID = "harness.run_id"
LABEL_ENGINE = "harness.engine"
LABEL_TP = "harness.tp"
LABEL_RUN_DIR = "harness.run_dir"

#: rlimit names Docker accepts for ``--ulimit``.
ULIMIT_NAMES = frozenset(
    {
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    }
)

_SIZE = re.compile(r"^\d+(\.\d+)?[bkmgBKMG]?[bB]?$")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CAPABILITY = re.compile(r"^[A-Z_]+$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ContainerOptionsLike(Protocol):
    """What :func:`container_spec` reads from a profile's ``container`` section
    (:class:`harness.profiles.ContainerOptions` has exactly these fields)."""

    @property
    def image(self) -> str | None: ...
    @property
    def ipc_mode(self) -> str | None: ...
    @property
    def shm_size(self) -> str | None: ...
    @property
    def network_mode(self) -> str | None: ...
    @property
    def cap_add(self) -> list[str]: ...
    @property
    def ulimits(self) -> dict[str, int]: ...
    @property
    def volumes(self) -> dict[str, VolumeSpec]: ...
    @property
    def gpus(self) -> str | int | list[int] | None: ...


def container_name(run_id: str) -> str:
    """The container's name for a run: ``harness-<run-id>`` (Docker's allowed characters)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)
    return f"harness-{safe}"


def default_image(engine: str, device: str) -> str:
    """The image used when neither ``--image`` nor a profile names one.

    The only gap is LMDeploy on the CPU: LMDeploy serves on GPUs only, so the way out on a
    GPU-less host is to plan for the GPU host the server will run on.
    """
    try:
        return DEFAULT_IMAGES[(engine, device)]
    except KeyError:
        pass
    if device == "cpu" and (engine, "cuda") in DEFAULT_IMAGES:
        name = ENGINE_NAMES.get(engine, engine)
        raise PlanError(
            f"no default image for {engine} on the CPU: {name} has no CPU backend",
            hint="plan for a GPU host with --device cuda (--device auto picks the CPU on a "
            "host without an NVIDIA GPU), or pass --image IMAGE",
        )
    raise PlanError(
        f"no default image for engine {engine} on {device}",
        hint="pass --image IMAGE (an image with the engine installed)",
    )


def engine_bind_host(network_mode: str, host: str) -> str:
    """The address the engine must listen on inside the container.

    With host networking it is the requested address itself. With a bridge the port is
    published by Docker (on ``host`` of the machine), and the engine must listen on all of
    the container's interfaces or the published port reaches nothing.
    """
    return host if network_mode == "host" else "0.0.0.0"


def publish_address(host: str) -> str:
    """Where a bridge-mode port is published on the host: loopback unless asked otherwise."""
    if host in {"", "localhost"}:
        return "127.0.0.1"
    return host


def _gpus(
    value: str | int | list[int] | None, *, device: str, engine: str, tp: int
) -> str | int | list[int] | None:
    """Resolve a GPU request: ``all``, a count (``tp`` = as many as TP), or device ids."""
    if device != "cuda" or engine == "sim":
        return None
    if value is None:
        return "all"
    if isinstance(value, bool):
        raise PlanError(f"container gpus must be 'all', a count or a list of ids (got {value!r})")
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return "all"
        if text == "tp":
            return tp
        if text.isdigit():
            value = int(text)
        else:
            try:
                value = [int(part) for part in text.replace("device=", "").split(",")]
            except ValueError:
                raise PlanError(
                    f"container gpus {value!r} is not 'all', 'tp', a count or ids like '0,1'"
                ) from None
    if isinstance(value, int):
        if value < tp:
            raise PlanError(f"gpus={value} gives the container fewer GPUs than --tp {tp}")
        return value
    ids = list(value)
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise PlanError(f"gpus {ids} must be distinct non-negative device ids")
    if len(ids) < tp:
        raise PlanError(f"gpus {ids} lists {len(ids)} devices but --tp is {tp}")
    return ids


def _cap_add(caps: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for cap in caps:
        name = cap.strip().upper().removeprefix("CAP_")
        if name == "ALL":
            raise PlanError(
                "cap_add ALL is as good as --privileged, which harness never uses",
                hint="add only the capabilities you need (SYS_PTRACE for stack dumps)",
            )
        if not _CAPABILITY.match(name):
            raise PlanError(f"cap_add {cap!r} is not a capability name such as SYS_PTRACE")
        if name not in out:
            out.append(name)
    return tuple(out)


def _ulimits(ulimits: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in ulimits.items():
        if name not in ULIMIT_NAMES:
            raise PlanError(f"unknown ulimit {name!r} (valid: {', '.join(sorted(ULIMIT_NAMES))})")
        if value < -1:
            raise PlanError(f"ulimit {name}={value}: use -1 for unlimited or a value >= 0")
        out[name] = int(value)
    return out


def _check_volume_source(source: str) -> None:
    if posixpath.isabs(source) or _VOLUME_NAME.match(source):
        return
    raise PlanError(
        f"volume {source!r} is neither an absolute host path nor a Docker volume name",
        hint="write host paths in full (/data/models), not relative or with ~",
    )


def container_spec(
    *,
    engine: str,
    device: Literal["cpu", "cuda"],
    model: str,
    model_is_local_dir: bool,
    tp: int,
    run_id: str,
    run_dir: str,
    host: str,
    port: int,
    options: ContainerOptionsLike,
    image: str | None,
    gpus: str | int | list[int] | None,
) -> ContainerSpec:
    """Plan the server's container. ``image`` and ``gpus`` are command-line overrides (they
    win over the profile's ``container.image`` / ``container.gpus``). Raises
    :class:`~harness.errors.PlanError` on settings that cannot work."""
    chosen_image = image or options.image or default_image(engine, device)

    ipc_mode = options.ipc_mode or "host"
    # /dev/shm of a private IPC namespace is what TP processes share; with host IPC the host's
    # /dev/shm is used and Docker ignores a size, so the plan shows none.
    shm_size = None if ipc_mode == "host" else (options.shm_size or DEFAULT_SHM_SIZE)
    if shm_size is not None and not _SIZE.match(shm_size):
        raise PlanError(f"shm_size {shm_size!r} is not a size such as 16g or 512m")

    network_mode = options.network_mode or "host"
    ports: dict[str, tuple[str, int]] = {}
    if network_mode == "none":
        raise PlanError("network_mode none leaves the server unreachable; use host or bridge")
    if network_mode != "host" and not network_mode.startswith("container:"):
        ports[f"{port}/tcp"] = (publish_address(host), port)

    volumes: dict[str, VolumeSpec] = {}
    targets: dict[str, str] = {}

    def mount(source: str, target: str, mode: Literal["ro", "rw"], *, fixed: bool) -> None:
        _check_volume_source(source)
        if target in targets and targets[target] != source:
            if fixed:
                raise PlanError(
                    f"volume {targets[target]} -> {target} hides the {target} harness mounts"
                )
            del volumes[targets[target]]
        if source in volumes and volumes[source].bind != target:
            raise PlanError(f"{source} is mounted twice ({volumes[source].bind} and {target})")
        volumes[source] = VolumeSpec(bind=target, mode=mode)
        targets[target] = source

    if not posixpath.isabs(run_dir):
        raise PlanError(f"run directory {run_dir!r} must be an absolute path for Docker")
    if model_is_local_dir:
        if not posixpath.isabs(model):
            raise PlanError(f"model directory {model!r} must be an absolute path for Docker")
        mount(model, model, "ro", fixed=True)
    mount(run_dir, run_dir, "rw", fixed=True)
    defaults: list[tuple[str, str]] = []
    if engine != "sim":
        defaults.append((HF_CACHE_VOLUME, HF_CACHE_TARGET))
    if engine == "vllm":
        defaults.append((VLLM_CACHE_VOLUME, VLLM_CACHE_TARGET))
    profile_targets = {v.bind for v in options.volumes.values()}
    for source, target in defaults:
        if target not in profile_targets:
            mount(source, target, "rw", fixed=False)
    for source, vol in options.volumes.items():
        if vol.bind in (model, run_dir) and source not in volumes:
            raise PlanError(f"volume {source} -> {vol.bind} hides the {vol.bind} harness mounts")
        mount(source, vol.bind, vol.mode, fixed=False)

    return ContainerSpec(
        image=chosen_image,
        name=container_name(run_id),
        ipc_mode=ipc_mode,
        network_mode=network_mode,
        shm_size=shm_size,
        cap_add=_cap_add(list(options.cap_add)),
        ulimits=_ulimits(options.ulimits),
        volumes=volumes,
        gpus=_gpus(gpus if gpus is not None else options.gpus, device=device, engine=engine, tp=tp),
        labels={
            LABEL_RUN_ID: run_id,
            LABEL_ENGINE: engine,
            LABEL_TP: str(tp),
            LABEL_RUN_DIR: run_dir,
        },
        ports=ports,
        init=True,
    )
