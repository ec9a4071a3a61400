"""The one process-group stop: a stopped child, a child that ignores SIGTERM, a grandchild
that left the group; and a recorded process is never confused with a recycled pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness import procgroup
from harness.procgroup import ProcessRef

IGNORE_TERM = (
    "import signal, time, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def _wait_line(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_a_stopped_child_is_stopped_for_good(cleanup: list[int]) -> None:
    proc = procgroup.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    cleanup.append(proc.pid)
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, "the child never stopped"
        time.sleep(0.01)
    code = procgroup.stop_tree(proc.pid, grace_s=5, popen=proc)
    # SIGCONT after SIGTERM: the stopped child acts on SIGTERM within the grace period.
    assert code == -signal.SIGTERM


def test_a_child_ignoring_sigterm_is_killed_after_the_grace(cleanup: list[int]) -> None:
    proc = procgroup.spawn(
        [sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    cleanup.append(proc.pid)
    _wait_line(proc)
    code = procgroup.stop_tree(proc.pid, grace_s=0.5, popen=proc)
    assert code == -signal.SIGKILL


def test_a_grandchild_that_left_the_group_is_stopped_too(
    tmp_path: Path, cleanup: list[int]
) -> None:
    # The child starts a grandchild in a session of its own (it leaves the process group),
    # records its pid and exits: only the "also" list still knows it.
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {IGNORE_TERM!r}], start_new_session=True,"
        " stdout=subprocess.DEVNULL)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
    )
    proc = procgroup.spawn([sys.executable, "-c", script])
    proc.wait(timeout=30)
    grandchild = int(pidfile.read_text())
    cleanup.append(grandchild)
    assert psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
    procgroup.stop_tree(proc.pid, grace_s=0.5, also=[grandchild])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ProcessRef.of(grandchild).alive():
        time.sleep(0.05)
    assert not ProcessRef.of(grandchild).alive()


def test_a_recorded_process_is_matched_on_its_start_time(cleanup: list[int]) -> None:
    proc = procgroup.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    cleanup.append(proc.pid)
    ref = ProcessRef.of(proc.pid)
    assert ref.alive()
    assert ProcessRef.from_dict(ref.to_dict()) == ref
    # Same pid, another start time: a recycled pid, never signalled.
    impostor = ProcessRef(proc.pid, (ref.create_time or 0) - 100.0)
    assert not impostor.alive()
    assert procgroup.stop_ref(impostor, grace_s=1) is False
    assert proc.poll() is None
    assert procgroup.stop_ref(ref, grace_s=5) is True
    assert ProcessRef.from_dict({"pid": "x"}) is None


def test_a_member_that_moved_to_another_group_of_the_session_is_stopped(
    tmp_path: Path, cleanup: list[int]
) -> None:
    # The grandchild leaves the process group (not the session) and its parent exits: neither
    # the tree nor the group finds it; the session does.
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {IGNORE_TERM!r}], process_group=0,"
        " stdout=subprocess.DEVNULL)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
    )
    proc = procgroup.spawn([sys.executable, "-c", script])
    proc.wait(timeout=30)
    grandchild = int(pidfile.read_text())
    cleanup.append(grandchild)
    assert os.getpgid(grandchild) != proc.pid and os.getsid(grandchild) == proc.pid
    assert grandchild in procgroup.members(proc.pid)
    procgroup.stop_tree(proc.pid, grace_s=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ProcessRef.of(grandchild).alive():
        time.sleep(0.05)
    assert not ProcessRef.of(grandchild).alive()


WRAPPER = (
    "import signal, subprocess, sys\n"
    "signal.signal(signal.SIGTERM, lambda *a: open(sys.argv[1], 'a').write('root: TERM\\n'))\n"
    "child = subprocess.Popen([sys.executable, '-c', sys.argv[2]])\n"
    "code = child.wait()\n"
    "open(sys.argv[1], 'a').write(f'child: {code}\\n')\n"
)
SLEEPER = "import time\nprint('ready', flush=True)\ntime.sleep(600)\n"


def test_term_root_false_terms_the_child_and_lets_the_wrapper_reap_it(
    tmp_path: Path, cleanup: list[int]
) -> None:
    # gcore around gdb: gdb gets the SIGTERM (and detaches), the script reaps it and exits.
    log = tmp_path / "wrapper.log"
    proc = procgroup.spawn(
        [sys.executable, "-c", WRAPPER, str(log), SLEEPER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    cleanup.append(proc.pid)
    _wait_line(proc)
    code = procgroup.stop_tree(proc.pid, grace_s=10, popen=proc, term_root=False)
    assert code == 0
    assert log.read_text() == f"child: {-signal.SIGTERM}\n"


def test_kill_group_kills_at_once(cleanup: list[int]) -> None:
    proc = procgroup.spawn(
        [sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    cleanup.append(proc.pid)
    _wait_line(proc)
    procgroup.kill_group(proc.pid)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    procgroup.kill_group(proc.pid)  # a group that is gone: nothing happens
