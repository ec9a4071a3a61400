"""``harness watch -- COMMAND``: any command under the watchdog (I/O).

The command runs in its own session (process group). Its output goes to the terminal and to
``server.log`` in a new run directory. No output (and no touch of ``--heartbeat FILE``) for
``stall_after`` seconds is a hang: the whole process tree is captured into
``incidents/<n>/``; with ``on_hang="stop"`` (the default) every process of the job is then
killed (SIGTERM, then SIGKILL), including children that left the process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from harness import procgroup
from harness.errors import BadInput
from harness.rundir import RunDir, new_run_id
from harness.watchdog.capture import CaptureOptions, Console, Incident, capture_incident
from harness.watchdog.rules import silence_verdict

FLIGHT_RECORDER_BUFFER = "2000"


def flight_recorder_env(run: RunDir) -> dict[str, str]:
    """PyTorch's NCCL flight recorder, dumping into the run directory on a collective timeout.

    ``TORCH_NCCL_DEBUG_INFO_PIPE_FILE`` lets the capture ask for a dump at any moment.
    """
    fr = run.path / "flight_recorder"
    fr.mkdir(parents=True, exist_ok=True)
    return {
        "TORCH_NCCL_TRACE_BUFFER_SIZE": FLIGHT_RECORDER_BUFFER,
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(fr / "nccl_trace_rank_"),
        "TORCH_NCCL_DEBUG_INFO_PIPE_FILE": str(fr / "nccl_trace_rank_"),
    }


def parse_env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` -> dict; a pair without ``=`` is bad input."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--env expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


@dataclass
class WatchResult:
    exit_code: int
    run: RunDir
    incident: Incident | None
    command_exit: int | None


def job_pids(root: int) -> list[int]:
    """The job's processes: ``root``, its descendants, and anything else in its session."""
    return procgroup.members(root)


def kill_job(proc: subprocess.Popen[bytes], known: Sequence[int], grace_s: float) -> None:
    """SIGTERM every process of the job (stopped ones are continued too), then SIGKILL
    (:func:`harness.procgroup.stop_tree`; ``known`` are the members seen while it ran)."""
    procgroup.stop_tree(proc.pid, grace_s=grace_s, also=known, popen=proc, kill_wait_s=10.0)


class _Pump(threading.Thread):
    """Copies the command's output to the terminal and the log; remembers the last byte time."""

    def __init__(self, src: IO[bytes], log: IO[bytes], echo: IO[bytes] | None) -> None:
        super().__init__(name="harness-watch-pump", daemon=True)
        self.src, self.log, self.echo = src, log, echo
        self.last_at = time.monotonic()

    def run(self) -> None:
        fd = self.src.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.last_at = time.monotonic()
            self.log.write(chunk)
            self.log.flush()
            if self.echo is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.echo.write(chunk)
                    self.echo.flush()


def run_watched(
    argv: Sequence[str],
    *,
    runs_root: Path,
    stall_after_s: float,
    heartbeat: Path | None = None,
    on_hang: Literal["keep", "stop"] = "stop",
    env: Mapping[str, str] | None = None,
    flight_recorder: bool = False,
    console: Console | None = None,
    echo: bool = True,
    grace_s: float = 10.0,
    tick_s: float = 0.5,
    capture_options: CaptureOptions | None = None,
) -> WatchResult:
    """Run ``argv`` under the watchdog; see the module docstring. Returns a :class:`WatchResult`
    whose ``exit_code`` is 1 when a hang was found, else the command's own exit code."""
    if not argv:
        raise BadInput(
            "harness watch needs a command after --",
            hint="harness watch --stall-after 60 -- torchrun --nproc-per-node 2 train.py",
        )
    if stall_after_s <= 0:
        raise BadInput("--stall-after must be positive")
    run = RunDir(runs_root / new_run_id("watch")).create()
    child_env = dict(os.environ)
    # Python children buffer a pipe by blocks; unbuffered output keeps "no output" meaningful.
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    extra = dict(env or {})
    if flight_recorder:
        extra = {**flight_recorder_env(run), **extra}
    child_env.update(extra)
    (run.path / "watch.json").write_text(
        json.dumps(
            {
                "argv": list(argv),
                "stall_after_s": stall_after_s,
                "heartbeat": str(heartbeat) if heartbeat else None,
                "on_hang": on_hang,
                "env": sorted(extra),
                "started_at": time.time(),
            },
            indent=2,
        )
    )
    log = open(run.server_log, "ab")  # noqa: SIM115 - closed in finally
    try:
        # The local runtime's launcher: its own session, so the whole job can be stopped.
        proc = procgroup.spawn(argv, env=child_env, stdout=subprocess.PIPE)
    except OSError as exc:
        log.close()
        raise BadInput(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
    assert proc.stdout is not None
    pump = _Pump(proc.stdout, log, sys.stdout.buffer if echo else None)
    pump.start()
    if console is not None:
        console.print(
            f"[green]watching[/] pid {proc.pid}: no output"
            f"{' or heartbeat' if heartbeat else ''} for {stall_after_s:g} s = hang; "
            f"run {run.path}"
        )
    incident: Incident | None = None
    known: list[int] = [proc.pid]
    hb_mtime: float | None = None
    hb_at = time.monotonic()
    what = "output or heartbeat" if heartbeat is not None else "output"
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if heartbeat is not None:
                with contextlib.suppress(OSError):
                    mtime = heartbeat.stat().st_mtime
                    if mtime != hb_mtime:
                        hb_mtime, hb_at = mtime, now
            known = sorted(set(known) | set(job_pids(proc.pid)))
            verdict = None
            if incident is None:
                verdict = silence_verdict(
                    now=now,
                    last_activity_at=max(pump.last_at, hb_at),
                    stall_after_s=stall_after_s,
                    what=what,
                )
            if verdict is not None:
                pids = job_pids(proc.pid)
                incident = capture_incident(
                    run,
                    pids=pids,
                    verdict=verdict,
                    env=child_env,
                    options=capture_options,
                    console=console,
                    extra={"command": list(argv)},
                )
                run.write_state(watchdog={"incidents": 1, "last": str(incident.path)})
                if on_hang == "stop":
                    if console is not None:
                        console.print("[yellow]stopping the job (--on-hang stop)[/]")
                    kill_job(proc, known, grace_s)
                    break
            time.sleep(max(0.0, tick_s - (time.monotonic() - now)))
    except KeyboardInterrupt:
        kill_job(proc, known, grace_s)
        raise
    finally:
        if proc.poll() is None and incident is None:
            kill_job(proc, known, grace_s)
        pump.join(timeout=5)
        log.close()
    code = proc.wait(timeout=30)
    run.write_state(command_exit=code, hang=incident is not None)
    return WatchResult(1 if incident is not None else _exit_status(code), run, incident, code)


def _exit_status(code: int) -> int:
    """A Popen return code as a shell would report it (-9 -> 137)."""
    return 128 - code if code < 0 else code
