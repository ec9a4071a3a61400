"""``harness dump --pid`` and ``--container`` against real processes (py-spy, /proc, Docker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, require

pytestmark = pytest.mark.integration

HARNESS = [sys.executable, "-m", "harness"]
# Every Python child says it is ready (imports done, in sleeper()) before the parent does.
KID = "import time\ndef sleeper():\n    print('ready', flush=True)\n    time.sleep(900)\nsleeper()"
TREE = f"""
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", {KID!r}], stdout=subprocess.PIPE, text=True)
        for _ in range(2)]
for kid in kids:
    assert kid.stdout.readline().strip() == "ready"
shell = subprocess.Popen(["sleep", "900"])
print("ready", flush=True)
time.sleep(900)
"""


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_dump_pid_tree_with_a_stopped_and_a_non_python_process(
    tree: subprocess.Popen[str], tmp_path: Path
) -> None:
    import psutil

    kids = psutil.Process(tree.pid).children()
    python_kids = [k for k in kids if "python" in k.name()]
    os.kill(python_kids[0].pid, signal.SIGSTOP)
    runs = tmp_path / "runs"
    out = subprocess.run(
        [*HARNESS, "dump", "--runs-dir", str(runs), "--pid", str(tree.pid), "--gap", "0.5"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    bundle = Path(out.stdout.strip().splitlines()[-1])
    incident = json.loads((bundle / "incident.json").read_text())
    procs = {p["pid"]: p for p in incident["processes"]}
    assert set(procs) == {tree.pid, *(k.pid for k in kids)}
    stopped = procs[python_kids[0].pid]
    assert stopped["state"] == "T"
    assert stopped["wait"].startswith("sleeper")
    assert incident["odd_one_out"]["pid"] == python_kids[0].pid
    sleep_pid = next(k.pid for k in kids if k.name() == "sleep")
    assert procs[sleep_pid]["python"] is False
    assert "not a Python process" in (bundle / "stacks" / f"{sleep_pid}.txt").read_text()
    for pid in procs:
        assert (bundle / "stacks" / f"{pid}.txt").exists()
    for name in ("summary.md", "processes.txt", "env.txt", "shm.txt"):
        assert (bundle / name).exists(), name
    first = (bundle / "summary.md").read_text().splitlines()[1]
    assert "stopped (state T)" in first


def test_dump_needs_exactly_one_target(tmp_path: Path) -> None:
    out = subprocess.run(
        [*HARNESS, "dump", "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "exactly one" in out.stderr
    gone = subprocess.run(
        [*HARNESS, "dump", "--runs-dir", str(tmp_path), "--pid", "999999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 2 and "no process 999999" in gone.stderr


IMAGE = "harness-vllm-cpu:0.32.0"


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "image", "inspect", IMAGE], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
def test_gloo_deadlock_inside_a_container(tmp_path: Path) -> None:
    require(_docker_ok(), f"Docker with the local image {IMAGE} (make images)")
    name = f"harness-test-deadlock-{os.getpid()}"
    fixtures = REPO / "tests" / "fixtures"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--init",
            "--name",
            name,
            "-v",
            f"{fixtures}:/fx:ro",
            "-e",
            "PYTHONUNBUFFERED=1",
            "--entrypoint",
            "python3",
            IMAGE,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "/fx/deadlock.py",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        # Both ranks say so just before they block: rank 1 skips its all_reduce, rank 0 waits in it.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            logs = subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True, timeout=30
            )
            out = logs.stdout + logs.stderr
            if "rank 0 step 3: enters all_reduce" in out and "rank 1 step 3: waits" in out:
                break
            time.sleep(1)
        else:
            pytest.fail("the deadlock program never reached its hang")
        runs = tmp_path / "runs"
        out = subprocess.run(
            [*HARNESS, "dump", "--runs-dir", str(runs), "--container", name, "--gap", "1"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stderr
        bundle = Path(out.stdout.strip().splitlines()[-1])
        incident = json.loads((bundle / "incident.json").read_text())
        roles = {p["role"]: p for p in incident["processes"]}
        assert roles["rank0"]["wait"] == "all_reduce", incident["where"]
        assert roles["rank1"]["wait"].startswith("wait_for_data_that_never_comes")
        assert "rank1 is not in the collective" in (bundle / "summary.md").read_text()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)
