"""Run a capture command with a deadline, keeping what it printed before the deadline (I/O).

py-spy, ssh, pdsh and srun all run through :func:`run_with_deadline`. On a timeout the output
read so far is kept (``subprocess.TimeoutExpired`` carries it as bytes, even in text mode) and
the command's whole process group is killed, so that a child it started (ssh's proxy, pdsh's
per-node ssh) cannot outlive the deadline or hold the pipes open.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness import procgroup

# After a kill, how long to wait for the pipes to close (the output already read is kept).
_DRAIN_S = 5.0


@dataclass(frozen=True)
class Completed:
    """What a command printed (stdout, then stderr) and how it ended."""

    returncode: int | None  # None: killed at the deadline; -1: could not start
    output: str
    timed_out: bool = False


def decode(data: bytes | str | None) -> str:
    """Output as text, whatever form it arrived in (bytes from a timeout, or None)."""
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def run_with_deadline(
    argv: Sequence[str], timeout_s: float, *, env: Mapping[str, str] | None = None
) -> Completed:
    """Run ``argv`` (stdin closed) for at most ``timeout_s`` seconds.

    ``env`` is added to this process's environment. Never raises for a command that fails,
    is missing or times out: the result says so.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env} if env else None,
            start_new_session=True,
        )
    except OSError as exc:
        return Completed(-1, f"{argv[0]}: {exc}\n")
    out: bytes | None
    err: bytes | None
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        partial_out, partial_err = exc.stdout, exc.stderr
        try:
            # Retrying communicate returns everything read, before and after the timeout.
            out, err = proc.communicate(timeout=_DRAIN_S)
        except subprocess.TimeoutExpired as again:
            # Something outside the group still holds a pipe: keep what arrived.
            out = again.stdout or partial_out
            err = again.stderr or partial_err
        return Completed(None, decode(out) + decode(err), timed_out=True)
    except BaseException:
        _kill_group(proc)
        raise
    return Completed(proc.returncode, decode(out) + decode(err))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    procgroup.kill_group(proc.pid)
    with contextlib.suppress(OSError):
        proc.kill()
