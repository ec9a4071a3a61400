"""The LaunchSpec: everything needed to start one server, frozen and serialisable.

A LaunchSpec is produced by :func:`harness.plan.make_plan` (pure) and consumed by the runtimes
(local process group, Docker). ``harness plan --format json`` prints exactly
``spec.to_json()``; its keys are a contract (docs/architecture.md), so fields are only ever added.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EngineName = Literal["vllm", "lmdeploy", "sim"]
RuntimeName = Literal["local", "docker"]
OnHang = Literal["keep", "stop", "restart"]


class Frozen(BaseModel):
    """Base for spec models: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class VolumeSpec(Frozen):
    """One bind mount, in docker-py's shape: ``{host_path: {"bind": ..., "mode": ...}}``."""

    bind: str
    mode: Literal["ro", "rw"] = "rw"


class ContainerSpec(Frozen):
    """How the server's container is created (``--runtime docker``).

    ``ulimits`` maps a limit name (``stack``, ``core``, ``memlock``, ``nofile``) to one value
    used as both soft and hard limit; ``-1`` means unlimited. ``gpus`` is ``"all"``, a count,
    a list of device ids, or ``None`` on a host without NVIDIA GPUs.
    """

    image: str
    name: str
    ipc_mode: str | None = "host"
    network_mode: str = "host"
    shm_size: str | None = None
    cap_add: tuple[str, ...] = ()
    ulimits: dict[str, int] = Field(default_factory=dict)
    volumes: dict[str, VolumeSpec] = Field(default_factory=dict)
    gpus: str | int | list[int] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    ports: dict[str, tuple[str, int]] = Field(default_factory=dict)
    init: bool = True
    privileged: Literal[False] = False


class Deadlines(Frozen):
    """Every wait harness does around a server has a deadline (seconds)."""

    startup_s: float = 1800.0
    startup_log_silence_s: float | None = None
    stop_grace_s: float = 15.0
    request_s: float = 600.0


class WatchSettings(Frozen):
    """Watchdog settings carried by the plan (rules are configured by profiles and flags)."""

    stall_after_s: float = 60.0
    canary_interval_s: float = 5.0
    canary_deadline_s: float | None = None
    engine_stall_s: float | None = None
    on_hang: OnHang = "keep"
    enabled: bool = True


class LoadLimits(Frozen):
    """Load-side limits a profile sets for the load generator (e.g. ``vlm-safe``)."""

    max_image_pixels: int | None = None
    max_images_per_request: int | None = None


NodeRole = Literal["head", "worker"]


class NodeSpec(Frozen):
    """One node of a multi-node launch (``--nodes N``): what runs there and with which network
    settings. Node 0 is the head (the API server and TP rank 0); the others run vLLM headless.

    ``address`` is the node's IPv4 address the other nodes (and harness) reach it on, ``iface``
    the interface that holds it; both come from the node's facts (gathered over ssh) or from
    ``--net-iface`` / ``--host-ip``. ``cpus`` are the node's cores the ranks are bound to.
    """

    rank: int
    role: NodeRole
    host: str
    hostname: str = ""
    address: str
    iface: str | None = None
    #: The node's facts the network checks compare against: its interfaces' IPv4 addresses and
    #: the address harness's ssh reached it on.
    interfaces: dict[str, str | None] = Field(default_factory=dict)
    reached_address: str | None = None
    cpus: list[int] = Field(default_factory=list)
    argv: list[str]
    env: dict[str, str]
    container: ContainerSpec | None = None

    @property
    def log_name(self) -> str:
        """The node's output in the run directory: ``server.log`` for the head (the log every
        startup rule reads), ``server.<host>.log`` for every other node."""
        return "server.log" if self.rank == 0 else f"server.{_file_safe(self.host)}.log"


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


class LaunchSpec(Frozen):
    """A complete, runnable description of one server launch.

    A multi-node launch (``nodes`` not empty) starts ``nodes[k].argv`` on every node; the
    top-level ``argv``, ``env`` and ``container`` are the head's (node 0).
    """

    run_id: str
    run_dir: str
    engine: EngineName
    model: str
    tp: int
    profiles: list[str]
    runtime: RuntimeName
    host: str
    port: int
    argv: list[str]
    env: dict[str, str]
    container: ContainerSpec | None = None
    health_url: str
    base_url: str
    served_model_name: str
    deadlines: Deadlines = Field(default_factory=Deadlines)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    load: LoadLimits = Field(default_factory=LoadLimits)
    device: Literal["cpu", "cuda"] = "cuda"
    rlimits: dict[str, int] = Field(default_factory=dict)
    faults: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    #: The pre-sharded copy the engine loads instead of ``model`` (``harness shard``), if any.
    sharded_copy: str | None = None
    #: The nodes of a multi-node launch (``--nodes N``, N > 1); empty for one machine.
    nodes: list[NodeSpec] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready mapping (the contract of ``harness plan --format json``)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> LaunchSpec:
        return cls.model_validate_json(text)
