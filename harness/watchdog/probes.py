"""Probes (I/O): what ``/proc``, ``/dev/shm``, NVML and ``nvidia-smi`` say about a hung job.

Every probe has a deadline or is a plain read of a file, and never raises for a process that
is gone or a tool that is missing: the result says so. :mod:`harness.watchdog.capture` runs
them; the rules that read their results are pure (:mod:`harness.watchdog.signatures`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.watchdog.rules import GpuSample
from harness.watchdog.subproc import run_with_deadline

# --------------------------------------------------------------------------------------------
# Commands with a deadline


def run_command(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """Run ``argv`` for at most ``timeout`` s: (exit code or None on timeout, its output).

    What it printed before the deadline is kept, followed by ``(timed out after N s)``.
    """
    done = run_with_deadline(argv, timeout)
    if done.timed_out:
        return None, done.output + f"\n(timed out after {timeout:g} s)"
    return done.returncode, done.output


# --------------------------------------------------------------------------------------------
# Processes (/proc via psutil)

#: psutil's status -> the one-letter state of ``/proc/<pid>/stat``.
PS_STATE = {
    psutil.STATUS_RUNNING: "R",
    psutil.STATUS_SLEEPING: "S",
    psutil.STATUS_DISK_SLEEP: "D",
    psutil.STATUS_STOPPED: "T",
    psutil.STATUS_TRACING_STOP: "t",
    psutil.STATUS_ZOMBIE: "Z",
    psutil.STATUS_DEAD: "X",
    psutil.STATUS_IDLE: "I",
}


@dataclass
class ProcInfo:
    """One process as the capture saw it: a first snapshot, then a second CPU sample."""

    pid: int
    name: str = "?"
    cmdline: list[str] = field(default_factory=list)
    ppid: int | None = None
    state: str = "?"
    threads: int | None = None
    environ: dict[str, str] = field(default_factory=dict)
    cpu_total: float | None = None
    sampled_at: float = 0.0
    python: bool = False
    exe: str = ""
    gone: bool = False
    cpu_percent: float | None = None
    state2: str | None = None

    @property
    def settled_state(self) -> str:
        """The state to report: a stopped, uninterruptible or zombie state seen in either
        sample wins (it is the interesting one), else the first sample's."""
        if self.state2 in (None, "gone") or self.state in ("T", "t", "D", "Z"):
            return self.state
        return self.state2 if self.state2 in ("T", "t", "D", "Z") else self.state


def proc_state(pid: int) -> str:
    """The one-letter state from ``/proc/<pid>/stat`` (``?`` when gone)."""
    try:
        return PS_STATE.get(psutil.Process(pid).status(), "?")
    except (psutil.Error, OSError):
        return "?"


def is_python_process(pid: int) -> bool:
    """Whether ``pid`` runs a Python interpreter (its binary or libpython is mapped)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                path = line.rsplit(" ", 1)[-1]
                base = os.path.basename(path.strip())
                if base.startswith(("python", "libpython")):
                    return True
    except OSError:
        pass
    try:
        return os.path.basename(psutil.Process(pid).exe()).startswith("python")
    except (psutil.Error, OSError):
        return False


def snapshot(pid: int) -> ProcInfo:
    """Name, command line, parent, state, threads, environment and CPU time of ``pid``."""
    info = ProcInfo(pid)
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            info.name = p.name()
            info.ppid = p.ppid()
            info.state = PS_STATE.get(p.status(), "?")
            info.threads = p.num_threads()
            t = p.cpu_times()
            info.cpu_total = t.user + t.system
            info.sampled_at = time.monotonic()
            with contextlib.suppress(psutil.Error, OSError):
                info.cmdline = p.cmdline()
            with contextlib.suppress(psutil.Error, OSError):
                info.exe = p.exe()
        with contextlib.suppress(psutil.Error, OSError):
            info.environ = dict(p.environ())
    except (psutil.Error, OSError):
        info.gone = True
        return info
    info.python = is_python_process(pid)
    return info


def resample(info: ProcInfo) -> None:
    """Second sample: CPU use since the snapshot, and the state now."""
    if info.gone:
        return
    try:
        p = psutil.Process(info.pid)
        with p.oneshot():
            t = p.cpu_times()
            now = time.monotonic()
            info.state2 = PS_STATE.get(p.status(), "?")
            info.threads = p.num_threads()
        if info.cpu_total is not None and now > info.sampled_at:
            info.cpu_percent = max(
                0.0, 100.0 * (t.user + t.system - info.cpu_total) / (now - info.sampled_at)
            )
    except (psutil.Error, OSError):
        info.state2 = "gone"


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (root first)."""
    try:
        p = psutil.Process(root)
        return [root, *[c.pid for c in p.children(recursive=True)]]
    except (psutil.Error, OSError):
        return []


def ns_pid(pid: int) -> int | None:
    """``pid`` as seen inside its innermost PID namespace (a container), from ``NSpid``."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def read_text(path: str) -> str | None:
    """A small text file (``/proc/...``), or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def has_cap_sys_ptrace() -> bool:
    """Whether this process holds CAP_SYS_PTRACE (bit 19 of CapEff)."""
    text = read_text("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) & (1 << 19))
            except (IndexError, ValueError):
                return False
    return False


# --------------------------------------------------------------------------------------------
# Files: logs, /dev/shm


def tail_bytes(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a file, starting at a line boundary."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})\n"
    if size > limit and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ShmUsage:
    """``/dev/shm`` in MiB (None when it cannot be read)."""

    total_mib: float | None
    free_mib: float | None


def shm_report() -> tuple[str, ShmUsage]:
    """``/dev/shm`` usage and its largest entries (NCCL and vLLM use it for TP)."""
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError as exc:
        return f"/dev/shm: {exc}\n", ShmUsage(None, None)
    lines = [
        f"/dev/shm: total {usage.total / 2**20:.0f} MiB, used {usage.used / 2**20:.0f} MiB, "
        f"free {usage.free / 2**20:.0f} MiB"
    ]
    entries: list[tuple[int, str]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/dev/shm"):
            with contextlib.suppress(OSError):
                entries.append((entry.stat(follow_symlinks=False).st_size, entry.name))
    for size, name in sorted(entries, reverse=True)[:50]:
        lines.append(f"{size:>14}  {name}")
    return "\n".join(lines) + "\n", ShmUsage(usage.total / 2**20, usage.free / 2**20)


# --------------------------------------------------------------------------------------------
# GPUs


def gpu_snapshot() -> tuple[list[GpuSample], str | None]:
    """Per-GPU utilisation and memory from NVML (nvidia-ml-py), when present."""
    try:
        import pynvml
    except ImportError:
        return [], None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver / no GPU: NVML raises its own error types
        return [], f"NVML unavailable: {exc}"
    gpus: list[GpuSample] = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(GpuSample(i, float(util.gpu), mem.used / 2**20, mem.total / 2**20))
    except Exception as exc:
        return gpus, f"NVML error: {exc}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return gpus, None


@dataclass(frozen=True)
class NvidiaSmi:
    """How ``nvidia-smi -q`` went: ``status`` ok | timeout | error | absent, and its output."""

    status: str
    text: str = ""


def nvidia_smi(timeout: float) -> NvidiaSmi:
    """``nvidia-smi -q`` when a GPU and the tool exist. A wedged GPU or driver shows as
    ``timeout``: the tool itself does not answer."""
    exe = shutil.which("nvidia-smi")
    if exe is None or not Path("/dev/nvidia0").exists():
        return NvidiaSmi("absent")
    code, out = run_command([exe, "-q"], timeout)
    if code is None:
        return NvidiaSmi("timeout", out)
    return NvidiaSmi("ok" if code == 0 else "error", out)


_SMI_GPU = re.compile(r"^GPU [0-9A-Fa-f:.]+\s*$")
_SMI_UTIL = re.compile(r"^\s+Gpu\s*:\s*(\d+(?:\.\d+)?)\s*%")


def gpus_from_nvidia_smi(text: str) -> list[GpuSample]:
    """Per-GPU utilisation from ``nvidia-smi -q`` text (when NVML is not installed)."""
    gpus: list[GpuSample] = []
    in_gpu = False
    for line in text.splitlines():
        if _SMI_GPU.match(line):
            in_gpu = True
            continue
        m = _SMI_UTIL.match(line)
        if in_gpu and m:
            gpus.append(GpuSample(len(gpus), float(m.group(1))))
            in_gpu = False
    return gpus


# --------------------------------------------------------------------------------------------
# Debug files the processes were told to write


def debug_files(envs: Sequence[Mapping[str, str]]) -> dict[str, list[Path]]:
    """NCCL debug logs and PyTorch flight-recorder dumps the processes were told to write."""
    found: dict[str, list[Path]] = {"nccl": [], "flight_recorder": []}
    for env in envs:
        nccl = env.get("NCCL_DEBUG_FILE")
        if nccl:
            pattern = nccl.replace("%h", "*").replace("%p", "*")
            found["nccl"].extend(Path(p) for p in glob.glob(pattern))
        for var in ("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", "TORCH_FR_DUMP_TEMP_FILE"):
            prefix = env.get(var)
            if prefix:
                found["flight_recorder"].extend(
                    Path(p)
                    for p in glob.glob(glob.escape(prefix) + "*")
                    if not p.endswith((".pipe", ".tmp"))
                )
    return {k: sorted(set(v)) for k, v in found.items()}


def flight_recorder_pipes(envs: Sequence[Mapping[str, str]]) -> list[str]:
    """The pipes through which the processes' flight recorders take dump requests: NCCL's
    (``TORCH_NCCL_DEBUG_INFO_PIPE_FILE<rank>.pipe``) and harness's CPU helper's."""
    pipes: set[str] = set()
    for env in envs:
        for var in ("TORCH_NCCL_DEBUG_INFO_PIPE_FILE", "HARNESS_FR_PIPE_PREFIX"):
            prefix = env.get(var)
            if prefix:
                pipes.update(glob.glob(glob.escape(prefix) + "*.pipe"))
    return sorted(pipes)


def trigger_flight_recorder(envs: Sequence[Mapping[str, str]]) -> list[str]:
    """Ask every flight recorder that listens for it for a dump (write to its pipe)."""
    done: list[str] = []
    for pipe in flight_recorder_pipes(envs):
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue  # no reader: the process that made it is gone
        try:
            os.write(fd, b"1\n")
            done.append(pipe)
        except OSError:
            pass
        finally:
            os.close(fd)
    return done


def wait_for_dumps(
    envs: Sequence[Mapping[str, str]], before: set[Path], expected: int, deadline_s: float
) -> list[Path]:
    """Wait (at most ``deadline_s``) until ``expected`` flight-recorder dumps newer than
    ``before`` exist and have stopped growing; returns the new ones."""
    end = time.monotonic() + deadline_s
    sizes: dict[Path, int] = {}
    while True:
        new = [p for p in debug_files(envs)["flight_recorder"] if p not in before]
        current = {}
        for p in new:
            with contextlib.suppress(OSError):
                current[p] = p.stat().st_size
        settled = len(current) >= expected and current == sizes
        if settled or time.monotonic() >= end:
            return sorted(current)
        sizes = current
        time.sleep(0.2)
