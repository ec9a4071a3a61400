"""``harness dump --pid`` and ``--container`` against real processes (py-spy, /proc, Docker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.integration.bundles import py_spy_stacks
from tests.integration.harnesscli import first_line, run, spawn, wait_for

pytestmark = pytest.mark.integration

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
def tree() -> subprocess.Popen[str]:
    """The tree, every process ready; stopped by the process_trees fixture."""
    proc = spawn([sys.executable, "-c", TREE], stderr=None)
    assert first_line(proc) == "ready"
    return proc


def test_dump_pid_tree_with_a_stopped_and_a_non_python_process(
    tree: subprocess.Popen[str], tmp_path: Path
) -> None:
    import psutil

    kids = psutil.Process(tree.pid).children()
    python_kids = [k for k in kids if "python" in k.name()]
    os.kill(python_kids[0].pid, signal.SIGSTOP)
    runs = tmp_path / "runs"
    out = run(runs, "dump", "--pid", str(tree.pid), "--gap", "0.5", timeout=180)
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
    # Stacks py-spy really took: the sleepers in sleeper(), the parent in its module.
    for kid in python_kids:
        py_spy_stacks(bundle, kid.pid, frame="sleeper")
    py_spy_stacks(bundle, tree.pid, frame="<module>")
    for name in ("summary.md", "processes.txt", "env.txt", "shm.txt"):
        assert (bundle / name).exists(), name
    first = (bundle / "summary.md").read_text().splitlines()[1]
    assert "stopped (state T)" in first


def test_dump_needs_exactly_one_target(tmp_path: Path) -> None:
    out = run(tmp_path, "dump", timeout=60)
    assert out.returncode == 2 and "exactly one" in out.stderr
    gone = run(tmp_path, "dump", "--pid", "999999", timeout=60)
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
        def blocked() -> bool:
            logs = subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True, timeout=30
            )
            out = logs.stdout + logs.stderr
            return "rank 0 step 3: enters all_reduce" in out and "rank 1 step 3: waits" in out

        wait_for(blocked, 180, "the deadlock program to reach its hang", interval=1)
        runs = tmp_path / "runs"
        out = run(runs, "dump", "--container", name, "--gap", "1", timeout=180)
        assert out.returncode == 0, out.stderr
        bundle = Path(out.stdout.strip().splitlines()[-1])
        incident = json.loads((bundle / "incident.json").read_text())
        roles = {p["role"]: p for p in incident["processes"]}
        assert roles["rank0"]["wait"] == "all_reduce", incident["where"]
        assert roles["rank1"]["wait"].startswith("wait_for_data_that_never_comes")
        assert "rank1 is not in the collective" in (bundle / "summary.md").read_text()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)
