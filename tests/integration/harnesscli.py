"""Running the ``harness`` command in integration tests, and cleaning up after it.

``harness`` starts servers in sessions of their own (so Ctrl-C reaches harness only): killing
the harness process on a test timeout would leave them running. :func:`run` starts harness in
its own session too, and on a timeout stops harness's whole tree; :func:`stop_all_under` stops
every server and background watcher recorded in the state files under a runs directory, which
the ``campaign_runs`` fixture does after every test, passed or failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import procgroup
from harness.procgroup import ProcessRef
from harness.records import read_json


def harness_argv(runs: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness", "--runs-dir", str(runs), *args]


def start(runs: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``harness ARGS`` in its own session, output captured (``env``: added variables)."""
    return subprocess.Popen(
        harness_argv(runs, *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **env} if env else None,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for ``proc``; on timeout stop its whole tree and fail the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procgroup.stop_tree(proc.pid, grace_s=10)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"harness did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(
    runs: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``harness ARGS`` to its end (bounded by ``timeout``)."""
    return finish(start(runs, *args, env=env), timeout)


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


def only_dir(runs: Path) -> Path:
    (path,) = [p for p in runs.iterdir() if p.is_dir()]
    return path


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate()`` until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(html: Path, user_data: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``html`` after headless Chromium loaded it (scripts run); with
    ``screenshot``, also a PNG of the page."""
    binary = chromium()
    assert binary is not None
    flags = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}"]
    dom = subprocess.run(
        [*flags, "--dump-dom", html.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    if screenshot is not None:
        subprocess.run(
            [
                *flags,
                f"--screenshot={screenshot}",
                "--window-size=1200,3000",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return dom
