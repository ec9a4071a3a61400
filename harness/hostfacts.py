"""Gather the facts the pure planner needs about this machine (I/O lives here, not in plan.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal

import psutil

from harness.errors import PlanError
from harness.plan import HostFacts

ENGINE_PYTHON_ENV = "HARNESS_ENGINE_PYTHON"


def gpu_count() -> int:
    """NVIDIA GPUs visible here (0 without a driver). ``nvidia-smi -L`` has a deadline."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def default_route_iface() -> str | None:
    """The interface of the default route (``/proc/net/route``), if any."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def iface_ipv4(iface: str) -> str | None:
    for addr in psutil.net_if_addrs().get(iface, []):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None


def detect(
    *,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    iface: str | None = None,
    host_ip: str | None = None,
) -> HostFacts:
    """Facts about this host; ``device``/``iface``/``host_ip`` override detection."""
    gpus = gpu_count()
    chosen: Literal["cpu", "cuda"]
    chosen = ("cuda" if gpus > 0 else "cpu") if device == "auto" else device
    if iface is not None and iface not in psutil.net_if_addrs():
        valid = ", ".join(sorted(psutil.net_if_addrs()))
        raise PlanError(f"--net-iface {iface!r} is not an interface here (valid: {valid})")
    iface = iface or default_route_iface()
    if host_ip is None and iface:
        host_ip = iface_ipv4(iface)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return HostFacts(
        device=chosen,
        cpu_count=cpus,
        gpu_count=gpus,
        python=os.environ.get(ENGINE_PYTHON_ENV) or sys.executable,
        iface=iface,
        host_ip=host_ip,
    )


def classify_model(model: str) -> tuple[str, bool]:
    """``(model, is_local_dir)``: a local directory (made absolute) or a hub id.

    Something that looks like a path but does not exist is bad input (exit 2), not a hub id:
    a typo must not turn into a download attempt.
    """
    expanded = os.path.expanduser(model)
    if os.path.exists(expanded):
        path = Path(expanded).resolve()
        if not path.is_dir():
            raise PlanError(f"model path {model} is a file; give the model's directory")
        if not (path / "config.json").exists():
            raise PlanError(
                f"model directory {model} has no config.json",
                hint="give a Hugging Face model directory, or build one: harness tiny-model DIR",
            )
        return str(path), True
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1
    if looks_like_path:
        raise PlanError(
            f"model path {model} does not exist",
            hint="build the embedded tiny model with: harness tiny-model DIR",
        )
    return model, False
