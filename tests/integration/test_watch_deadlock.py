"""``harness watch`` against a real torch.distributed (gloo) deadlock, and its basics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, have_module, require
from tests.integration.bundles import py_spy_stacks
from tests.integration.harnesscli import run

pytestmark = pytest.mark.integration

FIXTURE = REPO / "tests" / "fixtures" / "deadlock.py"


def _job_left(marker: str) -> list[int]:
    left = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and p.status() != "zombie":
                left.append(p.pid)
        except psutil.Error:
            continue
    return left


def _only_bundle(runs: Path) -> Path:
    bundles = sorted(runs.glob("*/incidents/*"))
    assert len(bundles) == 1, bundles
    return bundles[0]


def test_gloo_deadlock_is_caught_captured_and_cleaned_up(tmp_path: Path) -> None:
    require(have_module("torch"), "torch")
    require(
        shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists(),
        "py-spy",
    )
    script = tmp_path / "deadlock.py"  # a unique path: tells this job's processes apart
    shutil.copy(FIXTURE, script)
    runs = tmp_path / "runs"
    try:
        proc = run(
            runs, "watch", "--stall-after", "15", "--quiet", "--",
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script),
        )  # fmt: skip
    finally:
        left = _job_left(str(script))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1, proc.stderr
    assert left == []
    bundle = _only_bundle(runs)
    incident = json.loads((bundle / "incident.json").read_text())
    assert incident["kind"] == "output-stall"
    roles = {p["role"]: p for p in incident["processes"]}
    assert roles["rank0"]["wait"] == "all_reduce"
    assert roles["rank1"]["wait"].startswith("wait_for_data_that_never_comes")
    assert "torchrun" in roles
    rank0_stack = py_spy_stacks(bundle, roles["rank0"]["pid"], frame="all_reduce")
    assert rank0_stack.count("# dump ") == 2 and "all_reduce" in rank0_stack
    rank1_stack = py_spy_stacks(
        bundle, roles["rank1"]["pid"], frame="wait_for_data_that_never_comes"
    )
    assert "wait_for_data_that_never_comes" in rank1_stack
    summary = (bundle / "summary.md").read_text().splitlines()
    assert summary[0].startswith("output-stall (output-silence) detected at")
    assert summary[1].startswith("rank1 is not in the collective")
    assert "rank0 waits in all_reduce" in summary[1]
    log = (bundle.parent.parent / "server.log").read_text()
    assert "rank 0 step 2" in log


def test_heartbeat_counts_as_progress_and_exit_code_passes_through(tmp_path: Path) -> None:
    hb = tmp_path / "hb"
    code = (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(hb)!r})\n"
        "for _ in range(8):\n"
        "    p.touch(); time.sleep(0.5)\n"
        "sys.exit(3)\n"
    )
    runs = tmp_path / "runs"
    proc = run(
        runs, "watch", "--stall-after", "3", "--heartbeat", str(hb), "--",
        sys.executable, "-c", code, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert list(runs.glob("*/incidents/*")) == []


def test_silent_command_without_heartbeat_is_a_hang(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    marker = f"silent-{os.getpid()}"
    try:
        proc = run(
            runs, "watch", "--stall-after", "2", "--capture-gap", "0.5", "--",
            sys.executable, "-c", f"import time; time.sleep(600)  # {marker}", timeout=120,
        )  # fmt: skip
    finally:
        left = _job_left(marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1
    assert left == []
    bundle = _only_bundle(runs)
    assert (bundle / "summary.md").read_text().startswith("output-stall")


def test_watch_without_command_is_bad_input(tmp_path: Path) -> None:
    proc = run(tmp_path, "watch", timeout=60)
    assert proc.returncode == 2
    missing = run(tmp_path, "watch", "--", "/nonexistent/cmd", timeout=60)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and "cannot run" in missing.stderr
