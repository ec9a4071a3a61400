"""``harness dump --pid ROOT --core`` against a real process tree with a stopped child (gcore, gdb)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.watchdog.cores import CoreTarget, take_core
from tests.conftest import require

pytestmark = pytest.mark.integration

HARNESS = [sys.executable, "-m", "harness"]
SLEEPER = "import time\ndef sleeper():\n    time.sleep(900)\nsleeper()"
TREE = f"""
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", {SLEEPER!r}]) for _ in range(2)]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(900)
"""
ET_CORE = 4


def _need_gdb() -> None:
    require(
        shutil.which("gcore") is not None and shutil.which("gdb") is not None,
        "gdb (apt-get install gdb)",
    )


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    # A script, so that the launcher's role ("python tree.py") differs from the children's.
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        kids = [int(p) for p in proc.stdout.readline().split()]
        time.sleep(0.5)  # let the children finish importing before py-spy reads them
        yield proc, kids
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


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
    out = subprocess.run(
        [
            *HARNESS,
            "dump",
            "--runs-dir",
            str(runs),
            "--pid",
            str(root.pid),
            "--gap",
            "0.5",
            "--core",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
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
        assert "sleeper (<string>:3)" in stacks, stacks
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


def test_gcore_past_its_deadline_is_killed_and_the_process_runs_on(
    tree: tuple[subprocess.Popen[str], list[int]], tmp_path: Path
) -> None:
    _need_gdb()
    _, (pid, _) = tree
    cores = tmp_path / "cores"
    cores.mkdir()
    gcore = shutil.which("gcore")
    assert gcore is not None
    # A deadline far below gdb's start-up: gcore is always past it.
    res = take_core(
        CoreTarget(pid, "sleeper", "test"),
        gcore=gcore,
        cores_dir=cores,
        timeout_s=0.01,
        bundle=tmp_path,
    )
    assert res.timed_out and not res.ok and "timed out" in (res.error or "")
    assert list(cores.iterdir()) == []
    proc = psutil.Process(pid)
    assert proc.status() != psutil.STATUS_STOPPED
    status = Path(f"/proc/{pid}/status").read_text()
    assert "TracerPid:\t0\n" in status  # gdb detached (or died) and let go of it
    left = [
        c.pid
        for c in psutil.process_iter(["name", "cmdline"])
        if c.info["name"] == "gdb" and f"attach {pid}" in " ".join(c.info["cmdline"] or [])
    ]
    assert left == []


def test_core_is_refused_for_remote_dumps(tmp_path: Path) -> None:
    out = subprocess.run(
        [*HARNESS, "dump", "--runs-dir", str(tmp_path), "--hosts", "node-1", "--core"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--core works for processes on this machine" in out.stderr
