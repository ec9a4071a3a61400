"""One way to start a process in its own session and to stop it with everything it started.

The servers harness launches (vLLM's API server, EngineCore and workers; ``harness sim`` and its
workers; a ``torchrun`` job under ``harness watch``; the background watcher and log follower of a
detached run) all share one shape: a root process in its own session and process group, children
that may leave the group, and members that may be stopped (SIGSTOP, state T) when harness wants
them gone. :func:`stop_tree` is the escalation every stop uses:

1. SIGTERM to the group and to every member seen (root, descendants, anything still in the
   group), with SIGCONT after it so that a stopped member can act on it;
2. wait up to ``grace_s`` for all of them;
3. SIGKILL whatever is left (a stopped process dies on SIGKILL too) and reap.

Processes are matched on ``(pid, create_time)`` so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

#: What a stdout/stderr argument of :func:`spawn` may be.
Output = int | IO[Any] | None


@dataclass(frozen=True)
class ProcessRef:
    """A process as recorded in a state file: its pid and when it started (to tell it from a
    later process that got the same pid)."""

    pid: int
    create_time: float | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        """The live process ``pid`` with its creation time (``None`` if it is gone)."""
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return cls(pid, None)

    def process(self) -> psutil.Process | None:
        """The live, non-zombie process this refers to, else ``None``."""
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if self.create_time is not None and abs(proc.create_time() - self.create_time) >= 1.0:
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time}

    @classmethod
    def from_dict(cls, data: object) -> ProcessRef | None:
        """Read what :meth:`to_dict` wrote (``None`` when it is not there or malformed)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("pid"), int):
            return None
        created = data.get("create_time")
        return cls(int(data["pid"]), float(created) if isinstance(created, int | float) else None)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdout: Output = subprocess.DEVNULL,
    stderr: Output = subprocess.STDOUT,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (so a terminal's Ctrl-C reaches harness only and the
    whole tree can be stopped as a group). Raises ``FileNotFoundError`` / ``PermissionError``
    like :class:`subprocess.Popen`."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def tree(root_pid: int) -> list[int]:
    """``root_pid`` and its live descendants (root first); empty when the root is gone."""
    try:
        root = psutil.Process(root_pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def group_members(pgid: int) -> list[int]:
    """Every live process whose process group or session is ``pgid`` (members that left the
    tree, for example re-parented to init, are still found here, and so are those that moved
    to another group of the session: :func:`spawn` makes the root lead both)."""
    out = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid or os.getsid(proc.pid) == pgid:
                out.append(proc.pid)
    return out


def members(root_pid: int, pgid: int | None = None) -> list[int]:
    """Every live process of the job ``root_pid`` leads: the root, its descendants, then the
    other members of its process group and session (``pgid``, default the root's pid)."""
    found = tree(root_pid)
    seen = set(found)
    for pid in group_members(root_pid if pgid is None else pgid):
        if pid not in seen:
            seen.add(pid)
            found.append(pid)
    return found


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    procs = []
    for pid in set(pids):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _signal(pgid: int | None, procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    if pgid is not None:
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
            if sig != signal.SIGKILL:
                # A stopped process cannot act on SIGTERM until it is continued.
                proc.send_signal(signal.SIGCONT)


def stop_tree(
    root_pid: int,
    *,
    grace_s: float,
    pgid: int | None = None,
    also: Iterable[int] = (),
    popen: subprocess.Popen[bytes] | None = None,
    kill_wait_s: float = 5.0,
    term_root: bool = True,
) -> int | None:
    """Stop ``root_pid``, its descendants, its process group and session (``pgid``, default
    the root's own pid: it leads both) and the pids in ``also`` (members seen earlier that may
    have left): SIGTERM, up to ``grace_s``, then SIGKILL. Returns the root's exit code when it
    is our child (``popen``), else ``None``. Never waits longer than ``grace_s + 2 *
    kill_wait_s``.

    ``term_root=False`` spares the root the SIGTERM (not the SIGKILL): for a wrapper script
    that reaps its child and exits by itself (``gcore`` around gdb, which detaches from its
    target on SIGTERM), so that no zombie is left to an init that may not reap.
    """
    group = root_pid if pgid is None else pgid
    procs = _processes([*members(root_pid, group), *also])
    _signal(
        group if term_root else None,
        [p for p in procs if term_root or p.pid != root_pid],
        signal.SIGTERM,
    )
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        root_done = popen is None or popen.poll() is not None
        if root_done and not _alive(procs):
            break
        time.sleep(0.05)
    leftovers = _alive(procs)
    if leftovers:
        _signal(group, leftovers, signal.SIGKILL)
        # Our own child is reaped by Popen.wait below (psutil would reap it first and the
        # exit code would be lost).
        others = [p for p in leftovers if popen is None or p.pid != popen.pid]
        psutil.wait_procs(others, timeout=kill_wait_s)
    if popen is None:
        return None
    try:
        return popen.wait(timeout=kill_wait_s)
    except subprocess.TimeoutExpired:
        return None


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` at once, no grace (a capture command past its
    deadline: nothing it could still write matters). Never raises."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def stop_ref(ref: ProcessRef, *, grace_s: float) -> bool:
    """Stop a recorded process (and its tree and group) started by another harness process.
    Returns False when it was not running (or its pid now belongs to another process)."""
    if not ref.alive():
        return False
    stop_tree(ref.pid, grace_s=grace_s)
    return True
