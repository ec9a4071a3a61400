"""Fault specifications for the simulated engine (pure): ``KIND:key=value,...``.

=============  ==========================================  ==================================
kind           keys (defaults)                             effect
=============  ==========================================  ==================================
stall          p=0.01, after=5, for=<forever>              a request stops after ``after`` tokens
engine-stall   at=30, for=<forever>                        every request stops (engine loop halts)
worker-stall   rank=1, at=30, mode=spin|sleep (spin)       TP worker ``rank`` hangs inside a step;
                                                           its peers wait in ``all_reduce``
crash          at=60, code=1                               the server dies
startup-hang   p=1.0                                       never becomes healthy (hangs in init)
http-error     p=0.05, status=500                          requests fail with that HTTP status
slow-health    ms=3000                                     ``/health`` answers after ``ms``
=============  ==========================================  ==================================

Times (``at``, ``for``) are seconds after the server became ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import PlanError

#: kind -> {key: (type, default or None when required/unbounded)}
FAULT_KEYS: dict[str, dict[str, tuple[type, Any]]] = {
    "stall": {"p": (float, 0.01), "after": (int, 5), "for": (float, None)},
    "engine-stall": {"at": (float, 30.0), "for": (float, None)},
    "worker-stall": {"rank": (int, 1), "at": (float, 30.0), "mode": (str, "spin")},
    "crash": {"at": (float, 60.0), "code": (int, 1)},
    "startup-hang": {"p": (float, 1.0)},
    "http-error": {"p": (float, 0.05), "status": (int, 500)},
    "slow-health": {"ms": (float, 3000.0)},
}
FAULT_KINDS: tuple[str, ...] = tuple(FAULT_KEYS)


@dataclass(frozen=True)
class Fault:
    """One parsed fault: its kind and every key (defaults filled in)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    spec: str = ""

    def get(self, key: str) -> Any:
        return self.params.get(key)


def parse_fault(spec: str) -> Fault:
    """Parse ``KIND:key=value,...``; raise :class:`PlanError` naming the valid kinds/keys."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip()
    if kind not in FAULT_KEYS:
        raise PlanError(
            f"unknown fault kind {kind!r} in {spec!r}; valid kinds: {', '.join(FAULT_KINDS)}",
            hint="e.g. --fault stall:p=0.05,after=3  or  --fault worker-stall:rank=1,at=30",
        )
    keys = FAULT_KEYS[kind]
    params: dict[str, Any] = {k: default for k, (_, default) in keys.items()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in keys:
            raise PlanError(
                f"fault {spec!r}: {item!r} is not one of " + ", ".join(f"{k}=..." for k in keys),
            )
        typ = keys[key][0]
        try:
            value: Any = typ(raw.strip())
        except ValueError:
            raise PlanError(
                f"fault {spec!r}: {key} must be a {typ.__name__}, got {raw!r}"
            ) from None
        params[key] = value
    _check(kind, params, spec)
    return Fault(kind=kind, params=params, spec=text)


def _check(kind: str, params: dict[str, Any], spec: str) -> None:
    p = params.get("p")
    if p is not None and not 0.0 <= p <= 1.0:
        raise PlanError(f"fault {spec!r}: p must be between 0 and 1")
    for key in ("at", "for", "ms"):
        value = params.get(key)
        if value is not None and value < 0:
            raise PlanError(f"fault {spec!r}: {key} must not be negative")
    if kind == "stall" and params["after"] < 0:
        raise PlanError(f"fault {spec!r}: after must not be negative")
    if kind == "worker-stall":
        if params["rank"] < 0:
            raise PlanError(f"fault {spec!r}: rank must not be negative")
        if params["mode"] not in ("spin", "sleep"):
            raise PlanError(f"fault {spec!r}: mode must be spin or sleep")
    if kind == "http-error" and not 400 <= params["status"] <= 599:
        raise PlanError(f"fault {spec!r}: status must be an HTTP error status (400-599)")


def parse_faults(specs: list[str] | tuple[str, ...], *, tp: int | None = None) -> list[Fault]:
    """Parse every spec; with ``tp`` also check that worker ranks exist."""
    faults = [parse_fault(s) for s in specs]
    if tp is not None:
        for f in faults:
            if f.kind == "worker-stall" and f.params["rank"] >= tp:
                raise PlanError(
                    f"fault {f.spec!r}: rank {f.params['rank']} does not exist with --tp {tp}",
                    hint=f"ranks are 0..{tp - 1}; worker-stall needs --tp 2 or more",
                )
    return faults
