"""The simulated engine as a launch target: argv for ``harness sim`` (pure)."""

from __future__ import annotations

from harness.sim.faults import FAULT_KINDS, parse_fault

__all__ = ["FAULT_KINDS", "sim_argv", "validate_fault"]


def validate_fault(spec: str) -> None:
    """Raise :class:`harness.errors.PlanError` (one line, listing the valid kinds) if ``spec``
    is not a valid ``KIND:key=value,...`` fault."""
    parse_fault(spec)


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
    """``[python, "-m", "harness", "sim", "--host", ..., "--fault", f, ...]``."""
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
        validate_fault(fault)
        argv += ["--fault", fault]
    return argv + list(extra_args)
