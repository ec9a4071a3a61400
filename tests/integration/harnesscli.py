"""Processes in integration tests: the ``harness`` command line and anything else a test starts,
and cleaning up after them however the test ends.

Every process goes through :func:`spawn`: a session of its own (so a signal reaches it only when
the test sends one, and its whole tree can be stopped), recorded so that the ``process_trees``
fixture (autouse, ``tests/integration/conftest.py``) stops every one still running when the test
ends, passed or failed, with all it started (:func:`stop`: ``procgroup.stop_tree``, SIGTERM, a
grace, SIGKILL, stopped members included). ``harness`` itself goes through :func:`start` /
:func:`run` / :func:`finish`; a timeout stops harness's whole tree and fails the test.

``harness serve`` starts servers in sessions of their own, which outlive a harness killed with
SIGKILL: :func:`stop_all_under` stops every server and background watcher recorded in the state
files under a runs directory (the ``campaign_runs`` fixture does it after every test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from harness import procgroup
from harness.procgroup import ProcessRef
from harness.records import read_json

#: Every process spawned in this test session, oldest first (see the ``process_trees`` fixture).
_SPAWNED: list[subprocess.Popen[Any]] = []

Output = int | IO[Any] | None


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: Output = subprocess.PIPE,
    stderr: Output = subprocess.PIPE,
    text: bool = True,
    outlives_test: bool = False,
) -> subprocess.Popen[Any]:
    """``argv`` in a session of its own, stdin closed (``env``: variables added to ours).
    Stopped when the test ends unless ``outlives_test`` (a module-scoped fixture's server,
    which that fixture must stop)."""
    proc: subprocess.Popen[Any] = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=text,
        cwd=cwd,
        start_new_session=True,
        # Always os.environ, never the process's C-level environment (env=None): a library
        # may have set variables there (COLUMNS=80 under pytest, which truncates `ps` output).
        env={**os.environ, **(env or {})},
    )
    if not outlives_test:
        _SPAWNED.append(proc)
    return proc


def spawned_count() -> int:
    """How many processes were spawned so far (a mark for :func:`stop_spawned_since`)."""
    return len(_SPAWNED)


def stop_spawned_since(mark: int) -> None:
    """Stop every process spawned after ``mark`` that still runs (newest first)."""
    for proc in reversed(_SPAWNED[mark:]):
        stop(proc)
    del _SPAWNED[mark:]


def stop(proc: subprocess.Popen[Any], grace_s: float = 5.0) -> int | None:
    """Stop ``proc`` with its descendants, process group and session (never raises); its exit
    code, or None when it could not be reaped."""
    if proc.poll() is None:
        procgroup.stop_tree(proc.pid, grace_s=grace_s, popen=proc)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        return None
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def harness_argv(runs: Path | None, *args: str) -> list[str]:
    """``python -m harness [--runs-dir RUNS] ARGS``."""
    root = ["--runs-dir", str(runs)] if runs is not None else []
    return [sys.executable, "-m", "harness", *root, *args]


def start(
    runs: Path | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """``harness ARGS`` in its own session, output captured (``prefix``: a wrapper command such
    as ``setpriv ...``; ``env``: variables added)."""
    return spawn([*prefix, *harness_argv(runs, *args)], env=env, cwd=cwd)


def finish(proc: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for ``proc``; on timeout stop its whole tree and fail the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procgroup.stop_tree(proc.pid, grace_s=10, popen=proc)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{proc.args} did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(
    runs: Path | None,
    *args: str,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``harness ARGS`` to its end (bounded by ``timeout``)."""
    return finish(start(runs, *args, env=env, cwd=cwd, prefix=prefix), timeout)


def stop_all_under(runs: Path) -> list[int]:
    """Stop every watcher and server recorded under ``runs`` (state.json files); returns the
    pids that were still running."""
    found: list[int] = []
    for state_file in sorted(runs.rglob("state.json")):
        state = read_json(state_file)
        for ref in (ProcessRef.from_dict(state.get("watcher")), ProcessRef.from_dict(state)):
            if ref is not None and ref.alive():
                found.append(ref.pid)
                procgroup.stop_ref(ref, grace_s=5)
    return found


def running_members(pgid: int) -> list[int]:
    """The processes of process group or session ``pgid`` that still run (zombies waiting for
    an init that reaps slowly are not running)."""
    alive = []
    for pid in procgroup.group_members(pgid):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            continue
    return alive


def only_dir(runs: Path) -> Path:
    (path,) = [p for p in runs.iterdir() if p.is_dir()]
    return path


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.2,
    *,
    procs: Sequence[subprocess.Popen[Any]] = (),
) -> Any:
    """Poll ``predicate()`` until it returns something true (returned); fail naming ``what``
    after ``timeout``, or as soon as one of ``procs`` has exited."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args} exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return value


def first_line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """The first line ``proc`` prints (a fixture process saying it is ready), without its
    newline. Past ``timeout`` the process is stopped and the test fails; so it does when the
    process ends without a line."""
    assert proc.stdout is not None
    timer = threading.Timer(timeout, lambda: procgroup.stop_tree(proc.pid, grace_s=1))
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    if not line.endswith("\n"):
        pytest.fail(f"{proc.args} printed no line within {timeout} s (got {line!r})")
    return line.rstrip("\n")
