"""``harness dump --pid ROOT --core`` against a real process tree with a stopped child (gcore, gdb)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.watchdog.cores import CoreTarget, take_core
from tests.conftest import require
from tests.integration.harnesscli import first_line, run, spawn

pytestmark = pytest.mark.integration

# Each child says it is ready once in sleeper() (imports done), before the parent names them.
SLEEPER = (
    "import time\ndef sleeper():\n    print('ready', flush=True)\n    time.sleep(900)\nsleeper()"
)
TREE = f"""
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", {SLEEPER!r}], stdout=subprocess.PIPE, text=True)
        for _ in range(2)]
for kid in kids:
    assert kid.stdout.readline().strip() == "ready"
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(900)
"""
ET_CORE = 4


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    require(Path(found).exists(), "py-spy")
    return found


def _need_gdb() -> None:
    require(
        shutil.which("gcore") is not None and shutil.which("gdb") is not None,
        "gdb (apt-get install gdb)",
    )


@pytest.fixture
def tree(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """The launcher and its two sleeping children, all ready; stopped by process_trees."""
    # A script, so that the launcher's role ("python tree.py") differs from the children's.
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    proc = spawn([sys.executable, str(script)], stderr=None)
    kids = [int(p) for p in first_line(proc).split()]
    return proc, kids


def _elf_type(path: Path) -> int:
    with open(path, "rb") as fh:
        head = fh.read(18)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    little = head[5] == 1
    return int(struct.unpack("<H" if little else ">H", head[16:18])[0])


def test_dump_core_of_a_stopped_child_and_its_peer(
    tree: tuple[subprocess.Popen[str], list[int]], tmp_path: Path
) -> None:
    _need_gdb()
    root, (stopped, peer) = tree
    os.kill(stopped, signal.SIGSTOP)
    filters = {pid: Path(f"/proc/{pid}/coredump_filter").read_text() for pid in (stopped, peer)}
    runs = tmp_path / "runs"
    out = run(runs, "dump", "--pid", str(root.pid), "--gap", "0.5", "--core", timeout=300)
    assert out.returncode == 0, out.stderr
    bundle = Path(out.stdout.strip().splitlines()[-1])
    incident = json.loads((bundle / "incident.json").read_text())
    assert incident["odd_one_out"]["pid"] == stopped
    results = {r["pid"]: r for r in incident["cores"]["results"]}
    # The odd one out and its peer of the same family; the launcher (another role) is left out.
    assert set(results) == {stopped, peer}
    assert results[stopped]["why"].startswith("odd one out")
    # gdb attached to a stopped process and left it stopped: the capture changes nothing.
    assert psutil.Process(stopped).status() == psutil.STATUS_STOPPED
    assert psutil.Process(peer).status() != psutil.STATUS_STOPPED
    exe = os.readlink(f"/proc/{stopped}/exe")
    for pid in (stopped, peer):
        r = results[pid]
        assert r["ok"], r
        core = bundle / "cores" / f"core.{pid}"
        assert r["file"] == f"cores/core.{pid}" and core.stat().st_size == r["bytes"]
        assert _elf_type(core) == ET_CORE
        assert core.stat().st_mode & 0o077 == 0  # process memory: private
        assert r["exe"] == exe and str(core) in r["command"]
        bt = subprocess.run(
            ["gdb", "-batch", "-nx", "-c", str(core), "-ex", "bt", exe],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert "#0 " in bt.stdout, bt.stdout + bt.stderr
        assert "not in executable format" not in bt.stderr
        # The Python stacks, read from the core by py-spy (no gdb), saved next to it.
        assert r["py_spy"] == f"cores/core.{pid}.py-spy.txt"
        stacks = (bundle / r["py_spy"]).read_text()
        assert "sleeper (<string>:4)" in stacks, stacks
    # The processes' own core filters are as they were.
    for pid in (stopped, peer):
        assert Path(f"/proc/{pid}/coredump_filter").read_text() == filters[pid]
    readme = (bundle / "cores" / "README.txt").read_text()
    assert f"cores/core.{stopped}" in readme and "thread apply all bt" in readme
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    assert f"/proc/sys/kernel/core_pattern: {pattern}" in readme
    assert incident["cores"]["core_pattern"] == pattern
    assert results[stopped]["core_limit"] is not None
    summary = (bundle / "summary.md").read_text()
    assert f"cores/core.{stopped}" in summary and "cores/README.txt" in summary


#: ``gcore -o PREFIX PID`` as Debian's script runs it (gdb attaches and writes the core), except
#: that gdb then stays attached instead of detaching: a gcore still at work when its deadline
#: comes, as one of a process with gigabytes of memory would be.
SLOW_GCORE = """#!/bin/sh
gdb </dev/null --nx --batch -iex 'set debuginfod enabled off' \\
    -ex "attach $3" -ex "gcore $2.$3" -ex "shell sleep 600 # slow-gcore-$3" -ex detach -ex quit
"""
#: Long enough for gdb to attach and write a small process's core on a busy machine, which the
#: test checks (it would pass trivially if the deadline came before gdb attached).
DEADLINE_S = 15.0


def _watch(pid: int, core: Path, stop: threading.Event, seen: dict[str, bool]) -> None:
    """Note whether ``pid`` was ever traced (gdb attached) and ``core`` ever existed."""
    while not stop.is_set():
        status = Path(f"/proc/{pid}/status").read_text()
        if "TracerPid:\t0\n" not in status:
            seen["traced"] = True
        if core.exists() and core.stat().st_size > 0:
            seen["core"] = True
        time.sleep(0.05)


def test_gcore_past_its_deadline_is_killed_while_attached_and_the_process_runs_on(
    tree: tuple[subprocess.Popen[str], list[int]], tmp_path: Path
) -> None:
    _need_gdb()
    _, (pid, _) = tree
    cores = tmp_path / "cores"
    cores.mkdir()
    slow = tmp_path / "slow-gcore"
    slow.write_text(SLOW_GCORE)
    slow.chmod(0o755)
    seen = {"traced": False, "core": False}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(pid, cores / f"core.{pid}", stop, seen))
    watcher.start()
    try:
        res = take_core(
            CoreTarget(pid, "sleeper", "test"),
            gcore=str(slow),
            cores_dir=cores,
            timeout_s=DEADLINE_S,
            bundle=tmp_path,
        )
    finally:
        stop.set()
        watcher.join(timeout=10)
    # gdb had attached and written the core when the deadline came: the kill was not trivial.
    assert seen == {"traced": True, "core": True}, seen
    assert res.timed_out and not res.ok and "timed out" in (res.error or "")
    assert list(cores.iterdir()) == []  # the core of a gcore past its deadline is removed
    proc = psutil.Process(pid)
    assert proc.status() != psutil.STATUS_STOPPED
    status = Path(f"/proc/{pid}/status").read_text()
    assert "TracerPid:\t0\n" in status  # gdb detached (or died) and let go of it
    left = [
        c.pid
        for c in psutil.process_iter(["cmdline", "status"])
        if f"slow-gcore-{pid}" in " ".join(c.info["cmdline"] or [])
        and c.info["status"] != psutil.STATUS_ZOMBIE
    ]
    assert left == []  # neither gdb nor its shell command
    # And the process answers py-spy as before: it runs on, in sleeper().
    dump = subprocess.run(
        [_py_spy(), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0 and "sleeper" in dump.stdout, dump.stdout + dump.stderr


def test_core_is_refused_for_remote_dumps(tmp_path: Path) -> None:
    out = run(tmp_path, "dump", "--hosts", "node-1", "--core", timeout=60)
    assert out.returncode == 2 and "--core works for processes on this machine" in out.stderr
