"""The simulated engine as a plan target (``--engine sim``): argv for ``harness sim`` (pure).

The simulator itself is :mod:`harness.sim`. Its faults are checked here, once, when a plan is
made (:func:`validate_faults`, the rules of :mod:`harness.sim.faults`: kinds, keys, ranges, and a
``worker-stall`` rank that exists at the plan's TP), so a bad ``--fault`` is bad input before
anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from harness.engines.base import LaunchRequest, StartupPhase, flags_to_argv, phase
from harness.sim.faults import FAULT_KINDS, parse_fault, parse_faults

__all__ = ["FAULT_KINDS", "SimAdapter", "sim_argv", "validate_fault", "validate_faults"]


def validate_fault(spec: str) -> None:
    """Raise :class:`harness.errors.PlanError` (one line, listing the valid kinds) if ``spec``
    is not a valid ``KIND:key=value,...`` fault."""
    parse_fault(spec)


def validate_faults(specs: Sequence[str], *, tp: int | None = None) -> None:
    """Every fault of a plan (:func:`validate_fault`); with ``tp``, also that a
    ``worker-stall`` rank exists."""
    parse_faults(list(specs), tp=tp)


def sim_argv(
    python: str,
    *,
    host: str,
    port: int,
    tp: int,
    served_model_name: str,
    faults: list[str],
    extra_args: list[str],
) -> list[str]:
    """``[python, "-m", "harness", "sim", "--host", ..., "--fault", f, ...]``; the faults are
    validated first (:func:`validate_faults`)."""
    validate_faults(faults, tp=tp)
    argv = [
        python,
        "-m",
        "harness",
        "sim",
        "--host",
        host,
        "--port",
        str(port),
        "--tp",
        str(tp),
        "--model-name",
        served_model_name,
    ]
    for fault in faults:
        argv += ["--fault", fault]
    return argv + list(extra_args)


class SimAdapter:
    name = "sim"
    managed_flags: Mapping[str, str] = MappingProxyType(
        {
            "--host": "--host",
            "--port": "--port",
            "--tp": "--tp",
            "--model-name": "--model",
            "--fault": "--fault",
        }
    )
    startup_phases: tuple[StartupPhase, ...] = (
        phase("loading weights", r"Loading weights"),
        phase("starting workers", r"Worker_TP\d|worker"),
        phase("starting API server", r"Starting"),
        phase("ready", r"Application startup complete"),
    )

    def argv(self, request: LaunchRequest) -> list[str]:
        extra = flags_to_argv(request.profile_args) + list(request.extra_args)
        return sim_argv(
            request.python,
            host=request.host,
            port=request.port,
            tp=request.tp,
            served_model_name=request.served_model_name,
            faults=list(request.faults),
            extra_args=extra,
        )

    def env(self, request: LaunchRequest) -> dict[str, str]:
        return {}

    def warnings(self, request: LaunchRequest) -> list[str]:
        return []
