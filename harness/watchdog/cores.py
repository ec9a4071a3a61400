"""Core files of a hung process (opt-in: ``CaptureOptions(cores=True)``, ``--core``).

When a hang is in native code and ``py-spy --native`` is not enough, the field guide takes a core
with ``gcore <pid>`` (gdb attaches with ptrace, writes the process's memory, detaches: the
process lives on, and a stopped one stays stopped), and checks ``ulimit -c`` and
``/proc/sys/kernel/core_pattern`` to know where *crash* cores go. The capture does both.

Cores are large (a TP worker's core is about its resident memory), so only a few processes are
taken: the odd process out and its peers of the same family (``Worker_TP0`` beside
``Worker_TP1``), at most ``core_max``. Each ``gcore`` has its own deadline and runs in its own
session so that a timeout kills gdb too (SIGTERM first: gdb then detaches cleanly).

The first half of this module is pure (pid choice, commands, hints, ``cores/README.txt``); the
second half runs ``gcore``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from harness import procgroup
from harness.userfiles import human_size
from harness.watchdog.summary import OddOne, ProcessReport, family

CORE_PATTERN_FILE = "/proc/sys/kernel/core_pattern"
# Never written into a full disk: the bundle's other files matter more than a core.
DISK_RESERVE_BYTES = 1 << 30
INSTALL_HINT = "gcore not found: no core files (it comes with gdb: `sudo apt-get install gdb`)"
_HELPERS = frozenset({"resource_tracker"})
_DEDUP = re.compile(r"\[\d+\]$")


@dataclass(frozen=True)
class CoreTarget:
    """A process chosen for a core and why."""

    pid: int
    role: str
    why: str  # "odd one out: stopped (state T)", "peer of Worker_TP1", "Python process"


def _base_role(role: str) -> str:
    # Duplicate roles carry their pid ("python3 -c[4242]"); the family ignores it.
    return family(_DEDUP.sub("", role))


def choose_core_targets(
    processes: Sequence[ProcessReport], odd: OddOne | None, limit: int
) -> list[CoreTarget]:
    """Which processes get a core: the odd one out, then its peers, at most ``limit``.

    Peers are the processes of the odd one's family (``Worker_TP*``, ``rank*``), those with the
    same parent first. Without an odd process (or when it is a GPU, not a process): the Python
    processes whose stack did not move first, then the others; when none is Python, any live
    process. Processes on other nodes, gone, zombies and helper processes are never chosen.
    """
    if limit <= 0:
        return []
    live = [
        p
        for p in processes
        if p.host is None and p.state not in ("gone", "Z", "X") and p.role not in _HELPERS
    ]
    chosen: list[CoreTarget] = []
    target = next((p for p in live if odd is not None and p.pid == odd.pid), None)
    if odd is not None and target is not None:
        chosen.append(CoreTarget(target.pid, target.label, f"odd one out: {odd.reason}"))
        fam = _base_role(target.role)
        peers = [p for p in live if p.pid != target.pid and _base_role(p.role) == fam]
        peers.sort(key=lambda p: (p.ppid != target.ppid, p.pid))
        chosen += [CoreTarget(p.pid, p.label, f"peer of {target.label}") for p in peers]
        return chosen[:limit]
    python = [p for p in live if p.python]
    if python:
        python.sort(key=lambda p: p.moved is not False)  # stable: stuck stacks first
        return [CoreTarget(p.pid, p.label, "Python process") for p in python][:limit]
    return [CoreTarget(p.pid, p.label, "process") for p in live][:limit]


def gcore_argv(gcore: str, prefix: Path, pid: int) -> list[str]:
    """``gcore -o PREFIX PID``: gcore writes ``PREFIX.PID``."""
    return [gcore, "-o", str(prefix), str(pid)]


def core_path(prefix: Path, pid: int) -> Path:
    """The file ``gcore -o PREFIX PID`` writes."""
    return prefix.parent / f"{prefix.name}.{pid}"


def gdb_command(exe: str, core: Path | str) -> str:
    """The shell command that opens ``core`` with its executable and prints every thread."""
    return shlex.join(["gdb", "-q", exe or "EXECUTABLE", "-c", str(core)]) + (
        " -ex 'set pagination off' -ex 'thread apply all bt'"
    )


def core_pattern_hint(pattern: str | None) -> str:
    """Where the kernel puts *crash* cores (SIGSEGV, SIGABRT), from ``core_pattern``.

    gcore writes its file itself, so this only matters for ``kill -ABRT`` and real crashes.
    """
    override = "sudo sysctl -w kernel.core_pattern=/tmp/core-%e.%p.%h.%t"
    if pattern is None:
        return f"{CORE_PATTERN_FILE} is not readable here."
    pat = pattern.strip()
    if not pat:
        return f"core_pattern is empty: the kernel may write no crash core; `{override}`."
    if pat.startswith("|"):
        prog = pat[1:].split()[0] if pat[1:].split() else "?"
        base = os.path.basename(prog)
        if "apport" in base:
            return (
                "crash cores are piped to apport (Ubuntu): look in /var/crash and "
                "/var/lib/apport/coredump, or write plain files with "
                f"`{override}` (permanently in /etc/sysctl.conf)."
            )
        if "systemd-coredump" in base:
            return (
                "crash cores are piped to systemd-coredump: `coredumpctl list`, "
                "`coredumpctl gdb PID` (stored under /var/lib/systemd/coredump), or write plain "
                f"files with `{override}`."
            )
        return f"crash cores are piped to {prog}; plain files instead: `{override}`."
    if pat.startswith("/"):
        return f"crash cores are written to {os.path.dirname(pat) or '/'} (pattern {pat})."
    return (
        f"crash cores are written as {pat!r} (plus .PID when kernel.core_uses_pid is 1) in the "
        "crashing process's working directory."
    )


def parse_core_limit(limits: str) -> tuple[str, str] | None:
    """(soft, hard) of ``Max core file size`` in ``/proc/<pid>/limits``."""
    for line in limits.splitlines():
        if line.startswith("Max core file size"):
            cells = line[len("Max core file size") :].split()
            if len(cells) >= 2:
                return cells[0], cells[1]
    return None


def core_limit_hint(limit: tuple[str, str] | None, who: str = "the process") -> str | None:
    """Advice when the process would leave no core on a crash (soft limit 0)."""
    if limit is None or limit[0] != "0":
        return None
    return (
        f"{who}: core limit (ulimit -c) 0: a crash or `kill -ABRT` leaves no core file; start it "
        "after `ulimit -c unlimited` (permanently: `* soft core unlimited` in "
        "/etc/security/limits.conf). gcore does not need it."
    )


def core_limit_hint_for(results: Sequence[CoreResult]) -> str | None:
    """One hint naming every process whose soft core limit is 0."""
    zero = [r.role for r in results if r.core_limit is not None and r.core_limit[0] == "0"]
    return core_limit_hint(("0", ""), ", ".join(zero)) if zero else None


_KERNEL_MAPS = ("[vsyscall]", "[vvar]", "[vvar_vclock]", "[vdso]")
_SHM_PATHS = ("/dev/shm/", "/SYSV", "/dev/zero", "/memfd:")


def estimate_core_bytes(maps: str) -> int:
    """About how large gdb's core of a process is, from its ``/proc/<pid>/maps``.

    gdb (with the default ``coredump_filter`` 0x33) writes every anonymous mapping (even the
    untouched and the PROT_NONE ones: a vLLM CPU worker with 2 GB resident gave a 5.8 GiB core),
    shared memory, and the written pages of private file mappings (counted whole here). The
    resident size is far too low an estimate.
    """
    total = 0
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or "-" not in parts[0]:
            continue
        try:
            start, end = (int(x, 16) for x in parts[0].split("-", 1))
        except ValueError:
            continue
        perms, inode = parts[1], parts[4]
        path = parts[5].strip() if len(parts) > 5 else ""
        if path in _KERNEL_MAPS:
            continue
        anon = inode == "0"
        shm = path.startswith(_SHM_PATHS)
        private_written = "w" in perms and perms.endswith("p")
        if anon or shm or private_written:
            total += end - start
    return total


def human_bytes(n: int | None) -> str:
    """``1.7 GiB``, ``812 MiB`` (:func:`~harness.userfiles.human_size`); ``-`` when unknown."""
    return "-" if n is None else human_size(n)


@dataclass
class CoreResult:
    """One process's core (or why there is none)."""

    pid: int
    role: str
    why: str
    exe: str = ""
    file: str | None = None  # relative to the bundle: cores/core.<pid>
    bytes: int | None = None
    seconds: float | None = None
    ok: bool = False
    error: str | None = None
    timed_out: bool = False
    core_limit: tuple[str, str] | None = None
    command: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["core_limit"] = None if self.core_limit is None else list(self.core_limit)
        return d


def render_readme(
    results: Sequence[CoreResult],
    *,
    bundle: Path,
    core_pattern: str | None,
    gcore: str | None,
    timeout_s: float,
    skipped: Sequence[str] = (),
) -> str:
    """``cores/README.txt``: which cores, their sizes and how to open each one."""
    lines = ["# Core files (gcore)", ""]
    if gcore is None:
        lines += [
            INSTALL_HINT + ".",
            "Without gdb: `kill -ABRT PID` dumps a core through core_pattern (below), when the "
            "process's core limit allows it, but ends the process.",
            "",
        ]
    else:
        lines += [
            f"Taken with `{gcore} -o {bundle / 'cores' / 'core'} PID` (deadline {timeout_s:g} s "
            "each, in parallel). Each process was paused while gdb read it and then left as it "
            "was (a stopped process stays stopped).",
            "A core holds the process's whole memory: secrets (tokens, keys) in it are NOT "
            "redacted. Keep it private.",
            "",
        ]
    for r in results:
        head = f"{r.role} (pid {r.pid}; {r.why})"
        if r.ok and r.file:
            lines.append(f"{r.file}  {human_bytes(r.bytes)}  in {r.seconds or 0:.1f} s  {head}")
            lines.append(f"  {r.command}")
        else:
            lines.append(f"no core: {head}: {r.error or 'not taken'}")
        if r.note:
            lines.append(f"  note: {r.note}")
        if r.core_limit is not None:
            lines.append(f"  core limit (ulimit -c, soft/hard): {'/'.join(r.core_limit)}")
        lines.append("")
    lines += [f"- {s}" for s in skipped]
    if skipped:
        lines.append("")
    lines += [
        "Python frames: inside gdb, `py-bt` works when the interpreter's gdb extension is "
        "installed (Debian: python3-dbg).",
        "",
        "## Crash cores",
        f"{CORE_PATTERN_FILE}: {(core_pattern or '(unreadable)').strip()}",
        core_pattern_hint(core_pattern),
        *[h for h in [core_limit_hint_for(results)] if h],
        "Quick test that a crash leaves a core: `sleep 10 & kill -SEGV $!` in a shell after "
        "`ulimit -c unlimited`.",
    ]
    return "\n".join(lines) + "\n"


def notes_line(results: Sequence[CoreResult]) -> str:
    """One line for summary.md's notes."""
    done = [r for r in results if r.ok]
    parts = [f"{r.file} {r.role} ({human_bytes(r.bytes)}, {r.seconds or 0:.1f} s)" for r in done]
    failed = [f"{r.role}: {r.error}" for r in results if not r.ok]
    text = "core files: " + ("; ".join(parts) if parts else "none")
    if failed:
        text += "; failed: " + "; ".join(failed)
    return text + " (how to open them: cores/README.txt)"


# --------------------------------------------------------------------------------------------
# I/O


def find_gcore() -> str | None:
    """``$HARNESS_GCORE`` or ``gcore`` on PATH (Debian's gdb package)."""
    return os.environ.get("HARNESS_GCORE") or shutil.which("gcore")


def read_core_pattern() -> str | None:
    try:
        return Path(CORE_PATTERN_FILE).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _state(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except (psutil.Error, OSError):
        return "gone"


def _other_root(pid: int) -> bool:
    """Whether ``pid`` sees another filesystem (a container): its exe path is not ours."""
    try:
        mine, theirs = os.stat("/"), os.stat(f"/proc/{pid}/root")
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino)


def run_gcore(argv: Sequence[str], timeout_s: float) -> tuple[int | None, str]:
    """Run gcore in its own session; on timeout SIGTERM to gdb (it detaches), then SIGKILL.

    Returns (exit code or None on timeout, output).
    """
    # Output into a file, not a pipe: a gdb killed at its deadline can never block on a full
    # pipe, and what it printed before is kept.
    with tempfile.TemporaryFile() as out:
        try:
            proc = procgroup.spawn(argv, stdout=out)
        except OSError as exc:
            return -1, str(exc)
        code: int | None
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # gcore is a shell script around gdb: the SIGTERM goes to gdb only and the script
            # reaps it, so that no gdb zombie is left to an init that may not reap.
            procgroup.stop_tree(proc.pid, grace_s=5.0, popen=proc, term_root=False)
            code = None
        out.seek(0)
        return code, out.read().decode("utf-8", errors="replace")


def _last_error(out: str) -> str:
    keep = [
        ln.strip()
        for ln in out.splitlines()
        if ln.strip() and not ln.startswith(("warning:", "[", "0x")) and "Traceback" not in ln
    ]
    return (keep[-1] if keep else "gcore failed")[:300]


def _describe(target: CoreTarget) -> CoreResult:
    res = CoreResult(target.pid, target.role, target.why)
    with contextlib.suppress(OSError):
        res.exe = os.readlink(f"/proc/{target.pid}/exe")
    limits = _read(f"/proc/{target.pid}/limits")
    res.core_limit = parse_core_limit(limits) if limits else None
    return res


def take_core(
    target: CoreTarget, *, gcore: str, cores_dir: Path, timeout_s: float, bundle: Path
) -> CoreResult:
    """``gcore`` one process into ``cores_dir`` within ``timeout_s``; never raises."""
    res = _describe(target)
    before = _state(target.pid)
    prefix = cores_dir / "core"
    dest = core_path(prefix, target.pid)
    started = time.monotonic()
    rc, out = run_gcore(gcore_argv(gcore, prefix, target.pid), timeout_s)
    res.seconds = round(time.monotonic() - started, 3)
    after = _state(target.pid)
    if before not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP) and after in (
        psutil.STATUS_STOPPED,
        psutil.STATUS_TRACING_STOP,
    ):
        # gdb was killed while attached and left the process stopped: resume it as it was.
        with contextlib.suppress(OSError):
            os.kill(target.pid, signal.SIGCONT)
        res.note = "gdb left the process stopped; harness sent SIGCONT"
    if rc is None:
        res.timed_out = True
        res.error = f"gcore timed out after {timeout_s:g} s and was killed (partial core removed)"
        with contextlib.suppress(OSError):
            dest.unlink()
        return res
    if rc == 0 and dest.exists() and dest.stat().st_size > 0:
        with contextlib.suppress(OSError):
            dest.chmod(0o600)  # process memory: secrets included
        res.ok = True
        res.bytes = dest.stat().st_size
        res.file = str(dest.relative_to(bundle))
        res.command = gdb_command(res.exe, dest.resolve())
        if _other_root(target.pid):
            extra = (
                f"it runs in a container: open it there, or here with "
                f"-ex 'set sysroot /proc/{target.pid}/root' while the container runs"
            )
            res.note = f"{res.note}; {extra}" if res.note else extra
        return res
    res.error = _last_error(out)
    if any(m in out for m in ("Operation not permitted", "ptrace:")):
        res.error += " (ptrace refused: see kernel.yama.ptrace_scope / CAP_SYS_PTRACE)"
    with contextlib.suppress(OSError):
        if dest.exists() and dest.stat().st_size == 0:
            dest.unlink()
    return res


def take_cores(
    targets: Sequence[CoreTarget],
    *,
    bundle: Path,
    gcore: str | None,
    timeout_s: float,
    sizes: Mapping[int, int] | None = None,
) -> tuple[list[CoreResult], list[str]]:
    """gcore every target in parallel into ``bundle/cores``; (results, skipped-notes).

    A process whose estimated core (``estimate_core_bytes``, or ``sizes``) does not fit on the
    disk with 1 GiB to spare is skipped, and the notes say so.
    """
    if gcore is None:
        missing = [_describe(t) for t in targets]
        for r in missing:
            r.error = "gcore not found (sudo apt-get install gdb)"
        return missing, []
    if not targets:
        return [], []
    cores_dir = bundle / "cores"
    cores_dir.mkdir(parents=True, exist_ok=True)
    try:
        free = shutil.disk_usage(cores_dir).free - DISK_RESERVE_BYTES
    except OSError:
        free = 0
    need_of = dict(sizes) if sizes is not None else _estimates([t.pid for t in targets])
    go: list[CoreTarget] = []
    skipped: list[str] = []
    for t in targets:
        need = need_of.get(t.pid, 0)
        if need > free:
            skipped.append(
                f"{t.role} (pid {t.pid}): no core, it would be about {human_bytes(need)} and "
                f"{human_bytes(max(free, 0))} is free on the bundle's disk (1 GiB kept free); "
                f"by hand: gcore -o /a/roomy/dir/core {t.pid}"
            )
            continue
        free -= need
        go.append(t)
    results: list[CoreResult] = []
    if go:
        with cf.ThreadPoolExecutor(max_workers=len(go), thread_name_prefix="gcore") as pool:
            futs = [
                pool.submit(
                    take_core,
                    t,
                    gcore=gcore,
                    cores_dir=cores_dir,
                    timeout_s=timeout_s,
                    bundle=bundle,
                )
                for t in go
            ]
            results = [f.result() for f in futs]
    return results, skipped


def _estimates(pids: Sequence[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in pids:
        maps = _read(f"/proc/{pid}/maps")
        if maps:
            out[pid] = estimate_core_bytes(maps)
        else:
            with contextlib.suppress(psutil.Error, OSError):
                out[pid] = int(psutil.Process(pid).memory_info().rss)
    return out
