"""What every check is: a :class:`Check` (PASS / WARN / FAIL / SKIP, with the fix), and the
view of the plan the checks judge against (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["PASS", "WARN", "FAIL", "SKIP"]


@dataclass(frozen=True)
class Check:
    """One line of ``harness doctor``."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c.status == "FAIL"]


# ------------------------------------------------------------------------- what the plan says


@dataclass(frozen=True)
class PlanView:
    """What the checks need to know about the plan (from a LaunchSpec)."""

    engine: str
    tp: int
    runtime: str
    device: str
    profiles: tuple[str, ...] = ()
    ipc_mode: str | None = None
    shm_size: str | None = None
    cap_add: tuple[str, ...] = ()
    gpus: str | int | list[int] | None = None
    image: str | None = None


#: The fix of a rank that cannot reach its peers (distributed test, network check).
NET_FIX = (
    "GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME must name an interface that exists where every "
    "rank runs, and VLLM_HOST_IP one of its addresses; on one node GLOO_SOCKET_IFNAME=lo "
    "(the field guides' hint: `--profile net --net-iface lo`)"
)
