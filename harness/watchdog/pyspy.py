"""Running py-spy (I/O): one dump of one process, structured (``--json``) where py-spy can.

:func:`dump_stack` never blocks past its deadline and never raises: a stopped process (state T)
is read without suspending it (``--nonblocking``, Python frames only), a failed ``--native``
dump is retried with ``--nonblocking``, and a host that may not ptrace falls back to py-spy
inside the process's container. With a py-spy that has ``dump --json`` (0.3.11 and later) the
dump is JSON (thread names, active / owns-GIL flags, frames with file and line), parsed by
:func:`harness.watchdog.stacks.parse_json_dump`; the text for people is rendered from it.
:func:`dump_core` reads the Python stacks out of a core file (``py-spy dump --core``).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness.watchdog import stacks as st
from harness.watchdog.probes import has_cap_sys_ptrace, ns_pid, read_text, run_command

# (argv, timeout_s) -> (exit code, combined output). Runs a command inside the server's
# container; the Docker runtime provides it (``handle.exec_in_container``) so that the watchdog
# never imports ``docker``.
ContainerExec = Callable[[Sequence[str], float], tuple[int, str]]


def find_py_spy(explicit: str | None = None) -> str | None:
    """py-spy next to this interpreter (the venv), on PATH, or ``$HARNESS_PY_SPY``."""
    for candidate in (explicit, os.environ.get("HARNESS_PY_SPY")):
        if candidate:
            return candidate
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@functools.lru_cache(maxsize=8)
def supports(py_spy: str, flag: str) -> bool:
    """Whether this py-spy's ``dump`` takes ``flag`` (``--json``, ``--core``), from its help."""
    code, out = run_command([py_spy, "dump", "--help"], 10.0)
    return code == 0 and f" {flag}" in out


@dataclass
class Dump:
    """One ``py-spy dump`` of one process."""

    text: str  # py-spy's output: JSON when ``json`` is true, else its text format
    ok: bool
    error: str | None = None
    how: str = ""  # "native", "nonblocking", "in container", ...
    started_at: float = 0.0
    json: bool = False

    def threads(self) -> list[st.Thread]:
        """The parsed threads (structured from JSON, else parsed from the text)."""
        if not self.ok:
            return []
        return st.parse_json_dump(self.text) if self.json else st.parse_dump(self.text)


PERMISSION_MARKERS = (
    "Permission denied",
    "Operation not permitted",
    "os error 1)",
    "os error 13)",
    "EPERM",
)


def short_error(out: str) -> str:
    """py-spy's error in one line (its ``Error:`` line and the first causes)."""
    for line in out.splitlines():
        if line.startswith("Error:") or "timed out" in line:
            rest = out.split(line, 1)[1].splitlines()
            caused = [r.strip() for r in rest if r.strip().startswith(("0:", "1:"))]
            return " ".join([line.strip(), *caused[:2]])[:300]
    return (out.strip().splitlines() or ["py-spy failed"])[-1][:300]


def _looks_ok(out: str, as_json: bool) -> bool:
    return out.lstrip().startswith("[") if as_json else "Thread " in out


def dump_stack(
    pid: int,
    *,
    py_spy: str,
    state: str,
    timeout: float,
    native: bool = True,
    container_exec: ContainerExec | None = None,
    as_json: bool | None = None,
) -> Dump:
    """One ``py-spy dump`` of ``pid``: ``--native`` when possible, never blocking on it.

    A stopped process (T) cannot be suspended by py-spy, so it is read with
    ``--nonblocking``. When the native dump fails or times out, a non-blocking one is tried.
    When the host may not ptrace (a container without SYS_PTRACE elsewhere), ``py-spy`` runs
    inside the container through ``container_exec`` (text format there: the container's py-spy
    may be older). ``as_json`` defaults to what this py-spy supports.
    """
    started = time.monotonic()
    if as_json is None:
        as_json = supports(py_spy, "--json")
    fmt = ["--json"] if as_json else []
    if state in ("T", "t") or not native:
        attempts = [("nonblocking", [py_spy, "dump", *fmt, "--nonblocking", "--pid", str(pid)])]
    else:
        attempts = [
            ("native", [py_spy, "dump", *fmt, "--native", "--pid", str(pid)]),
            ("nonblocking", [py_spy, "dump", *fmt, "--nonblocking", "--pid", str(pid)]),
        ]
    errors: list[str] = []
    permission = False
    for how, argv in attempts:
        left = timeout - (time.monotonic() - started)
        if left <= 0.5:
            break
        rc, out = run_command(argv, left)
        if rc == 0 and _looks_ok(out, as_json):
            return Dump(out, True, "; ".join(errors) or None, how, started, as_json)
        errors.append(f"{how}: {short_error(out)}")
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
            return Dump(out, True, "; ".join(errors) or None, "in container", started, False)
        errors.append(f"in container: {short_error(out)}")
    msg = "; ".join(errors) or "py-spy did not run"
    if permission:
        msg += "\n" + ptrace_advice()
    return Dump("", False, msg, "", started, as_json)


def dump_core(core: Path, *, py_spy: str, executable: str | None, timeout: float) -> str:
    """The Python stacks in a core file: ``py-spy dump --core`` (no gdb needed to read them).

    Returns what py-spy printed, or one line saying why there is nothing (an older py-spy, a
    core it cannot read, the deadline).
    """
    if not supports(py_spy, "--core"):
        return f"# py-spy at {py_spy} has no `dump --core` (py-spy 0.4 and later)\n"
    argv = [py_spy, "dump", "--core", str(core)]
    code, out = run_command(argv, timeout)
    head = f"# {' '.join(argv)}" + (f"  (executable: {executable})" if executable else "")
    if code == 0 and "Thread " in out:
        return f"{head}\n{out}"
    why = "timed out" if code is None else f"exit {code}"
    return f"{head}\n# py-spy could not read the Python stacks ({why}): {short_error(out)}\n"


def ptrace_advice(
    *,
    scope: str | None = None,
    cap_sys_ptrace: bool | None = None,
    in_container: bool | None = None,
) -> str:
    """Why py-spy may not attach here and how to fix it (the seeds' recipe)."""
    scope = scope if scope is not None else read_text("/proc/sys/kernel/yama/ptrace_scope")
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
