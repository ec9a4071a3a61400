"""Capture (I/O): every process's stacks and state, logs, GPU and shm -> an incident bundle.

``capture_incident`` is the one entry point the watcher, ``harness watch``, ``harness dump`` and
the campaign layer call. It never waits without a deadline: each ``py-spy`` call has its own
timeout, dumps run in parallel, and a stopped process (state T) is read without suspending it
(``py-spy --nonblocking``), so a stopped or dying process cannot stall the capture.

Bundle layout (DESIGN.md): ``summary.md``, ``incident.json``, ``stacks/<pid>.txt`` (two dumps a
few seconds apart), ``processes.txt``, ``env.txt`` (secrets redacted), ``server.log.tail``,
``nvidia-smi.txt`` / NVML in ``incident.json`` on GPU hosts, ``shm.txt``, ``inflight.jsonl``,
``launch_spec.json``, ``nccl/`` and ``flight_recorder/`` when those files exist, and with
``CaptureOptions(cores=True)`` ``cores/`` (gcore files and ``README.txt``; see ``cores.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from harness.rundir import RunDir
from harness.spec import LaunchSpec
from harness.watchdog import cores as cr
from harness.watchdog import stacks as st
from harness.watchdog.redact import Redactor
from harness.watchdog.rules import GpuSample, Verdict
from harness.watchdog.subproc import run_with_deadline
from harness.watchdog.summary import (
    OddOne,
    ProcessReport,
    odd_one_out,
    processes_table,
    render_summary,
    role_name,
    where_line,
)

# (argv, timeout_s) -> (exit code, combined output). Runs a command inside the server's
# container; the Docker runtime provides it (``handle.exec_in_container``) so that this module
# never imports ``docker``.
ContainerExec = Callable[[Sequence[str], float], tuple[int, str]]


class Console(Protocol):
    def print(self, *objects: Any, **kwargs: Any) -> None: ...


@dataclass(frozen=True)
class CaptureOptions:
    """How a capture runs. ``gap_s`` separates the two dumps (stuck or slow?)."""

    rounds: int = 2
    gap_s: float = 2.0
    timeout_s: float = 10.0
    max_workers: int = 32
    log_tail_bytes: int = 256 * 1024
    py_spy: str | None = None
    native: bool = True
    # Core files (gcore) of the odd process out and its peers, after the stacks: opt-in,
    # because a core is about as large as the process's resident memory.
    cores: bool = False
    core_max: int = 4
    core_timeout_s: float = 60.0


@dataclass
class Incident:
    """A written bundle and what it says."""

    path: Path
    verdict: Verdict
    processes: list[ProcessReport]
    odd: OddOne | None
    headline: str
    where: str
    capture_s: float
    also: list[Verdict] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.md"


def find_py_spy(explicit: str | None = None) -> str | None:
    """py-spy next to this interpreter (the venv), on PATH, or ``$HARNESS_PY_SPY``."""
    for candidate in (explicit, os.environ.get("HARNESS_PY_SPY")):
        if candidate:
            return candidate
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


# --------------------------------------------------------------------------------------------
# Process information


@dataclass
class _Proc:
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


_PS_STATE = {
    psutil.STATUS_RUNNING: "R",
    psutil.STATUS_SLEEPING: "S",
    psutil.STATUS_DISK_SLEEP: "D",
    psutil.STATUS_STOPPED: "T",
    psutil.STATUS_TRACING_STOP: "t",
    psutil.STATUS_ZOMBIE: "Z",
    psutil.STATUS_DEAD: "X",
    psutil.STATUS_IDLE: "I",
}


def proc_state(pid: int) -> str:
    """The one-letter state from ``/proc/<pid>/stat`` (``?`` when gone)."""
    try:
        return _PS_STATE.get(psutil.Process(pid).status(), "?")
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


def _snapshot(pid: int) -> _Proc:
    info = _Proc(pid)
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            info.name = p.name()
            info.ppid = p.ppid()
            info.state = _PS_STATE.get(p.status(), "?")
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


def _resample(info: _Proc) -> None:
    if info.gone:
        return
    try:
        p = psutil.Process(info.pid)
        with p.oneshot():
            t = p.cpu_times()
            now = time.monotonic()
            info.state2 = _PS_STATE.get(p.status(), "?")
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


# --------------------------------------------------------------------------------------------
# py-spy


@dataclass
class Dump:
    text: str
    ok: bool
    error: str | None = None
    how: str = ""  # "native", "nonblocking", "in container", ...
    started_at: float = 0.0


def _run(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
    done = run_with_deadline(argv, timeout)
    if done.timed_out:  # what it printed before the deadline is kept
        return None, done.output + f"\n(timed out after {timeout:g} s)"
    return done.returncode, done.output


PERMISSION_MARKERS = (
    "Permission denied",
    "Operation not permitted",
    "os error 1)",
    "os error 13)",
    "EPERM",
)


def _short_error(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("Error:") or "timed out" in line:
            rest = out.split(line, 1)[1].splitlines()
            caused = [r.strip() for r in rest if r.strip().startswith(("0:", "1:"))]
            return " ".join([line.strip(), *caused[:2]])[:300]
    return (out.strip().splitlines() or ["py-spy failed"])[-1][:300]


def dump_stack(
    pid: int,
    *,
    py_spy: str,
    state: str,
    timeout: float,
    native: bool = True,
    container_exec: ContainerExec | None = None,
) -> Dump:
    """One ``py-spy dump`` of ``pid``: ``--native`` when possible, never blocking on it.

    A stopped process (T) cannot be suspended by py-spy, so it is read with
    ``--nonblocking``. When the native dump fails or times out, a non-blocking one is tried.
    When the host may not ptrace (a container without SYS_PTRACE elsewhere), ``py-spy`` runs
    inside the container through ``container_exec``.
    """
    started = time.monotonic()
    if state in ("T", "t") or not native:
        attempts = [("nonblocking", [py_spy, "dump", "--nonblocking", "--pid", str(pid)])]
    else:
        attempts = [
            ("native", [py_spy, "dump", "--native", "--pid", str(pid)]),
            ("nonblocking", [py_spy, "dump", "--nonblocking", "--pid", str(pid)]),
        ]
    errors: list[str] = []
    permission = False
    for how, argv in attempts:
        left = timeout - (time.monotonic() - started)
        if left <= 0.5:
            break
        rc, out = _run(argv, left)
        if rc == 0 and "Thread " in out:
            return Dump(out, True, "; ".join(errors) or None, how, started)
        errors.append(f"{how}: {_short_error(out)}")
        permission = permission or any(m in out for m in PERMISSION_MARKERS)
        if "No such process" in out or not psutil.pid_exists(pid):
            break
    if container_exec is not None and psutil.pid_exists(pid):
        inner = ns_pid(pid) or pid
        flag = ["--nonblocking"] if state in ("T", "t") else ["--native"]
        try:
            rc, out = container_exec(["py-spy", "dump", *flag, "--pid", str(inner)], timeout)
        except Exception as exc:  # the runtime's exec failed: report, never raise from capture
            rc, out = -1, f"container exec failed: {exc}"
        if rc == 0 and "Thread " in out:
            return Dump(out, True, "; ".join(errors) or None, "in container", started)
        errors.append(f"in container: {_short_error(out)}")
    msg = "; ".join(errors) or "py-spy did not run"
    if permission:
        msg += "\n" + ptrace_advice()
    return Dump("", False, msg, "", started)


def ptrace_advice(
    *,
    scope: str | None = None,
    cap_sys_ptrace: bool | None = None,
    in_container: bool | None = None,
) -> str:
    """Why py-spy may not attach here and how to fix it (the seeds' recipe)."""
    scope = scope if scope is not None else _read("/proc/sys/kernel/yama/ptrace_scope")
    if cap_sys_ptrace is None:
        cap_sys_ptrace = has_cap_sys_ptrace()
    if in_container is None:
        in_container = Path("/.dockerenv").exists()
    lines = ["py-spy could not attach (ptrace refused)."]
    if scope is not None and scope.strip() not in ("", "0"):
        lines.append(
            f"kernel.yama.ptrace_scope is {scope.strip()}: run `sudo sysctl -w "
            "kernel.yama.ptrace_scope=0` (permanent: kernel.yama.ptrace_scope = 0 in "
            "/etc/sysctl.d/10-ptrace.conf), or run harness as root."
        )
    if not cap_sys_ptrace:
        lines.append(
            "this process lacks CAP_SYS_PTRACE: run harness with sudo, or for a container add "
            "the capability (`--cap-add SYS_PTRACE`, the `debug` profile) so py-spy can run "
            "inside it."
        )
    if in_container:
        lines.append("harness itself runs in a container: capture from the host instead.")
    return " ".join(lines)


def has_cap_sys_ptrace() -> bool:
    """Whether this process holds CAP_SYS_PTRACE (bit 19 of CapEff)."""
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) & (1 << 19))
            except (IndexError, ValueError):
                return False
    return False


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Side captures


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


def shm_report() -> str:
    """``/dev/shm`` usage and its largest entries (NCCL and vLLM use it for TP)."""
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError as exc:
        return f"/dev/shm: {exc}\n"
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
    return "\n".join(lines) + "\n"


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


def nvidia_smi(timeout: float) -> str | None:
    """``nvidia-smi -q`` when a GPU and the tool exist (None otherwise)."""
    exe = shutil.which("nvidia-smi")
    if exe is None or not Path("/dev/nvidia0").exists():
        return None
    _, out = _run([exe, "-q"], timeout)
    return out


def debug_files(envs: Sequence[Mapping[str, str]]) -> dict[str, list[Path]]:
    """NCCL debug logs and PyTorch flight-recorder dumps the processes were told to write."""
    found: dict[str, list[Path]] = {"nccl": [], "flight_recorder": []}
    for env in envs:
        nccl = env.get("NCCL_DEBUG_FILE")
        if nccl:
            pattern = nccl.replace("%h", "*").replace("%p", "*")
            found["nccl"].extend(Path(p) for p in glob.glob(pattern))
        fr = env.get("TORCH_NCCL_DEBUG_INFO_TEMP_FILE")
        if fr:
            found["flight_recorder"].extend(
                Path(p) for p in glob.glob(fr + "*") if not p.endswith(".pipe")
            )
    return {k: sorted(set(v)) for k, v in found.items()}


def trigger_flight_recorder(envs: Sequence[Mapping[str, str]]) -> list[str]:
    """Ask PyTorch's NCCL flight recorder for a dump (``TORCH_NCCL_DEBUG_INFO_PIPE_FILE``)."""
    done: list[str] = []
    for env in envs:
        prefix = env.get("TORCH_NCCL_DEBUG_INFO_PIPE_FILE")
        if not prefix:
            continue
        for pipe in glob.glob(prefix + "*.pipe"):
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.write(fd, b"1\n")
                done.append(pipe)
            except OSError:
                pass
            finally:
                os.close(fd)
    return done


# --------------------------------------------------------------------------------------------
# The capture


class _Writer:
    """Writes bundle files, every text through the redactor."""

    def __init__(self, root: Path, redactor: Redactor) -> None:
        self.root = root
        self.redactor = redactor
        self.files: list[str] = []

    def text(self, rel: str, content: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.redactor.text(content), encoding="utf-8")
        if rel not in self.files:
            self.files.append(rel)
        return path

    def copy_text(self, rel: str, src: Path, limit: int) -> None:
        self.text(rel, tail_bytes(src, limit))

    def copy_binary(self, rel: str, src: Path, limit: int = 64 * 2**20) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if src.stat().st_size <= limit:
                shutil.copyfile(src, path)
                self.files.append(rel)


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def capture_incident(
    run: RunDir | None,
    out_dir: Path | None = None,
    *,
    pids: Sequence[int],
    kind: str = "manual",
    detail: str = "",
    rule: str = "manual",
    verdict: Verdict | None = None,
    also: Sequence[Verdict] = (),
    spec: LaunchSpec | None = None,
    log_path: Path | None = None,
    inflight: Sequence[Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    container_exec: ContainerExec | None = None,
    options: CaptureOptions | None = None,
    console: Console | None = None,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Incident:
    """Capture every process in ``pids`` into ``out_dir`` (default: the run's next incident dir).

    ``verdict`` (or ``kind``/``rule``/``detail``) says what was detected; ``spec``, ``log_path``
    (default: the run's server.log) and ``inflight`` (request payloads, for replay) are copied
    when given. Returns the :class:`Incident`; never raises for a process that is gone, stopped
    or refuses ptrace: the bundle says so instead.
    """
    opts = options or CaptureOptions()
    t0 = time.monotonic()
    detected_wall = time.time()
    if verdict is None:
        verdict = Verdict(kind, rule, detail or kind)
    if out_dir is None:
        if run is None:
            raise ValueError("capture_incident needs a run or an out_dir")
        out_dir = run.next_incident_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    if log_path is None and run is not None and run.server_log.exists():
        log_path = run.server_log

    seen: set[int] = set()
    ordered = [p for p in pids if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
    procs = [_snapshot(pid) for pid in ordered]
    redactor = Redactor.from_envs(
        os.environ, spec.env if spec else None, env, *[p.environ for p in procs]
    )
    w = _Writer(out_dir, redactor)
    py_spy = find_py_spy(opts.py_spy)
    notes = list(notes)
    if py_spy is None:
        notes.append("py-spy not found: no stacks (pip install py-spy, or set HARNESS_PY_SPY)")
    if console is not None:
        console.print(f"[bold]capturing[/] {len(procs)} process(es) into {out_dir}")

    python_procs = [p for p in procs if p.python and not p.gone]
    rounds: dict[int, list[Dump]] = {p.pid: [] for p in python_procs}
    fr_triggered = trigger_flight_recorder([p.environ for p in procs])
    if fr_triggered:
        notes.append(f"asked the NCCL flight recorder for a dump via {len(fr_triggered)} pipe(s)")

    workers = max(1, min(opts.max_workers, len(python_procs)))
    with cf.ThreadPoolExecutor(max_workers=workers + 2, thread_name_prefix="capture") as pool:
        for r in range(max(1, opts.rounds)):
            round_start = time.monotonic()
            if py_spy is not None:
                futs = {
                    pool.submit(
                        dump_stack,
                        p.pid,
                        py_spy=py_spy,
                        state=proc_state(p.pid),
                        timeout=opts.timeout_s,
                        native=opts.native,
                        container_exec=container_exec,
                    ): p.pid
                    for p in python_procs
                }
                for fut in cf.as_completed(futs):
                    rounds[futs[fut]].append(fut.result())
            if r == 0:
                # Between the two dumps: everything else, and the CPU-use window.
                _side_captures(w, procs, spec, log_path, inflight, opts, notes)
            if r + 1 < opts.rounds:
                left = opts.gap_s - (time.monotonic() - round_start)
                if left > 0:
                    time.sleep(left)
    for p in procs:
        _resample(p)

    gpus, gpu_note = gpu_snapshot()
    if gpu_note:
        notes.append(gpu_note)

    reports = _reports(procs, rounds, w, t0)
    odd = odd_one_out(reports, gpus)
    core_info = (
        _capture_cores(w, out_dir, reports, odd, opts, notes, console) if opts.cores else None
    )
    capture_s = time.monotonic() - t0
    detected_at = _utc(detected_wall)
    w.text("processes.txt", processes_table(reports))
    incident_json: dict[str, Any] = {
        "kind": verdict.kind,
        "rule": verdict.rule,
        "detail": verdict.detail,
        "detected_at": dt.datetime.fromtimestamp(detected_wall, dt.UTC).isoformat(),
        "also": [v.to_dict() for v in also],
        "odd_one_out": None
        if odd is None
        else {"pid": odd.pid, "process": odd.label, "reason": odd.reason},
        "where": where_line(reports, odd),
        "processes": [r.to_dict() for r in reports],
        "gpus": [g.__dict__ for g in gpus],
        "run_id": run.run_id if run else None,
        "capture_s": round(capture_s, 3),
        "notes": notes,
    }
    if core_info is not None:
        incident_json["cores"] = core_info
    if extra:
        incident_json.update(extra)
    files = sorted({*w.files, "incident.json", "summary.md"})
    w.text("incident.json", json.dumps(incident_json, indent=2, default=str))
    summary = render_summary(
        verdict=verdict,
        detected_at=detected_at,
        processes=reports,
        odd=odd,
        also=also,
        gpus=gpus,
        notes=notes,
        files=files,
        capture_s=capture_s,
    )
    w.text("summary.md", summary)
    lines = summary.splitlines()
    incident = Incident(out_dir, verdict, reports, odd, lines[0], lines[1], capture_s, list(also))
    if console is not None:
        console.print(f"[bold red]{incident.headline}[/]")
        console.print(incident.where)
        console.print(f"bundle: {out_dir}")
    return incident


def _side_captures(
    w: _Writer,
    procs: Sequence[_Proc],
    spec: LaunchSpec | None,
    log_path: Path | None,
    inflight: Sequence[Mapping[str, Any]] | None,
    opts: CaptureOptions,
    notes: list[str],
) -> None:
    root_env = next((p.environ for p in procs if p.environ), {})
    env_text = ["# environment of the server's first process (secrets redacted)"]
    env_text += w.redactor.env_lines(root_env)
    if spec is not None:
        env_text += ["", "# launch spec env (secrets redacted)", *w.redactor.env_lines(spec.env)]
    w.text("env.txt", "\n".join(env_text) + "\n")
    if spec is not None:
        w.text("launch_spec.json", spec.to_json())
    if log_path is not None:
        w.copy_text("server.log.tail", log_path, opts.log_tail_bytes)
    if inflight is not None:
        w.text("inflight.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in inflight))
    w.text("shm.txt", shm_report())
    smi = nvidia_smi(opts.timeout_s)
    if smi is not None:
        w.text("nvidia-smi.txt", smi)
    envs = [p.environ for p in procs] + ([dict(spec.env)] if spec else [])
    for kind, paths in debug_files(envs).items():
        for src in paths[:64]:
            if kind == "nccl":
                w.copy_text(f"nccl/{src.name}", src, 4 * 2**20)
            else:
                w.copy_binary(f"flight_recorder/{src.name}", src)
    if any(e.get("NCCL_DEBUG") for e in envs) and not any(e.get("NCCL_DEBUG_FILE") for e in envs):
        notes.append("NCCL_DEBUG is set without NCCL_DEBUG_FILE: NCCL output is in server.log")


def _capture_cores(
    w: _Writer,
    out_dir: Path,
    reports: Sequence[ProcessReport],
    odd: OddOne | None,
    opts: CaptureOptions,
    notes: list[str],
    console: Console | None,
) -> dict[str, Any]:
    """gcore the odd process out and its peers into ``cores/``; ``incident.json``'s ``cores``."""
    gcore = cr.find_gcore()
    targets = cr.choose_core_targets(reports, odd, opts.core_max)
    if console is not None and gcore is not None and targets:
        names = ", ".join(t.role for t in targets)
        console.print(f"taking {len(targets)} core file(s) with gcore: {names}")
    results, skipped = cr.take_cores(
        targets, bundle=out_dir, gcore=gcore, timeout_s=opts.core_timeout_s
    )
    pattern = cr.read_core_pattern()
    readme = cr.render_readme(
        results,
        bundle=out_dir,
        core_pattern=pattern,
        gcore=gcore,
        timeout_s=opts.core_timeout_s,
        skipped=skipped,
    )
    w.text("cores/README.txt", readme)
    w.files.extend(r.file for r in results if r.ok and r.file)
    if gcore is None:
        notes.append(cr.INSTALL_HINT + "; see cores/README.txt")
    elif not targets:
        notes.append("core files: no live process to take a core of")
    else:
        notes.append(cr.notes_line(results))
    notes.extend(skipped)
    return {
        "gcore": gcore,
        "timeout_s": opts.core_timeout_s,
        "max": opts.core_max,
        "core_pattern": pattern,
        "core_pattern_hint": cr.core_pattern_hint(pattern),
        "results": [r.to_dict() for r in results],
        "skipped": skipped,
    }


def _reports(
    procs: Sequence[_Proc], rounds: Mapping[int, list[Dump]], w: _Writer, t0: float
) -> list[ProcessReport]:
    names = [role_name(p.name, p.cmdline, p.environ) for p in procs]
    counts = {n: names.count(n) for n in names}
    reports: list[ProcessReport] = []
    for p, name in zip(procs, names, strict=True):
        role = name if counts[name] == 1 else f"{name}[{p.pid}]"
        cmd = " ".join(w.redactor.argv(p.cmdline)) or p.name
        state = (
            p.state
            if p.state2 in (None, "gone") or p.state in ("T", "t", "D", "Z")
            else (p.state2 if p.state2 in ("T", "t", "D", "Z") else p.state)
        )
        rep = ProcessReport(
            pid=p.pid,
            role=role,
            state="gone" if p.gone else state,
            cpu_percent=p.cpu_percent,
            threads=p.threads,
            cmdline=cmd,
            ppid=p.ppid,
            python=p.python,
        )
        rel = f"stacks/{p.pid}.txt"
        if p.gone:
            rep.capture_error = "process exited before the capture"
            w.text(rel, f"{p.pid}: process exited before the capture\n")
        elif not p.python:
            w.text(
                rel,
                f"{p.pid} {role}: not a Python process ({p.exe or p.name}); "
                f"state {state}; no Python stack. Command: {cmd}\n",
            )
        else:
            dumps = rounds.get(p.pid, [])
            parts: list[str] = []
            parsed: list[list[st.Thread]] = []
            for i, d in enumerate(dumps, 1):
                when = d.started_at - t0
                if d.ok:
                    parts.append(
                        f"# dump {i} of {len(dumps)} (+{when:.1f} s, py-spy {d.how})\n{d.text}"
                    )
                    parsed.append(st.parse_dump(d.text))
                else:
                    parts.append(
                        f"# dump {i} of {len(dumps)} (+{when:.1f} s): py-spy failed: {d.error}\n"
                    )
            if not dumps:
                parts.append("# no dump taken (py-spy unavailable)\n")
            w.text(rel, "\n".join(parts))
            if parsed:
                wait = st.process_wait(parsed[-1])
                if wait is not None:
                    rep.wait, rep.wait_frame, rep.wait_category = (
                        wait.label,
                        wait.frame,
                        wait.category,
                    )
                if len(parsed) >= 2:
                    rep.moved = st.signature(parsed[0]) != st.signature(parsed[-1])
            failed = [d.error for d in dumps if not d.ok and d.error]
            if failed and not parsed:
                rep.capture_error = failed[-1]
        rep.stack_files = [rel]
        reports.append(rep)
    return reports
