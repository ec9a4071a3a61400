"""``harness watch`` diagnosis on real processes: PyTorch's flight recorder on a real
torch.distributed (Gloo) deadlock names the missing rank, and a user's signature file
(``--signatures``) names the cause on line 3 of summary.md; a bad file is one line, exit 2."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, have_module, require
from tests.integration.harnesscli import run

pytestmark = pytest.mark.integration

FIXTURE = REPO / "tests" / "fixtures" / "deadlock.py"


def _kill_left(marker: str) -> None:
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            continue


def test_flight_recorder_names_the_rank_that_never_entered(tmp_path: Path) -> None:
    require(have_module("torch"), "torch")
    script = tmp_path / "deadlock.py"  # a unique path: tells this job's processes apart
    shutil.copy(FIXTURE, script)
    runs = tmp_path / "runs"
    try:
        out = run(
            runs, "watch", "--stall-after", "10", "--quiet", "--flight-recorder", "--",
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script),
        )  # fmt: skip
    finally:
        _kill_left(str(script))
    assert out.returncode == 1, out.stderr
    (bundle,) = runs.glob("*/incidents/*")
    # Rank 1 skipped the all_reduce of step 3 (the 4th collective); rank 0 waits in it.
    dumps = sorted(p.name for p in (bundle / "flight_recorder").iterdir())
    assert dumps == ["nccl_trace_rank_cpu_0", "nccl_trace_rank_cpu_1"]
    summary = (bundle / "summary.md").read_text()
    lines = summary.splitlines()
    assert "rank0 waits in all_reduce" in lines[1]  # the dump helper never moves a stack
    assert "## Flight recorder" in lines
    assert (
        "nccl_trace_rank_cpu_*: missing ranks: default_pg: rank 1 never entered and rank 0 "
        "never finished collective #4 (gloo:all_reduce)"
    ) in lines
    assert "| default_pg | 1 | #3 | #3 | gloo:all_reduce | scheduled |" in lines
    incident = json.loads((bundle / "incident.json").read_text())
    (report,) = incident["flight_recorder"]
    (group,) = report["groups"]
    assert group["never_entered"] == [1] and group["never_finished"] == [0]
    assert group["per_rank"]["0"] == {
        "entered": 4, "completed": 3, "last_op": "gloo:all_reduce", "state": "scheduled"
    }  # fmt: skip


#: A user's signature file (the docs' ``my-hangs.yaml``): a log line names the cause.
SIGNATURES = (REPO / "tests" / "fixtures" / "my-hangs.yaml").read_text()


def test_a_user_signature_names_the_cause(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(SIGNATURES)
    runs = tmp_path / "runs"
    marker = f"ps-wait-{os.getpid()}"
    code = f"print('waiting for the parameter server at 10.0.0.7:2222', flush=True)\nimport time; time.sleep(600)  # {marker}"
    try:
        out = run(
            runs, "watch", "--stall-after", "2", "--capture-gap", "0.5", "--signatures",
            str(mine), "--", sys.executable, "-c", code, timeout=120,
        )  # fmt: skip
    finally:
        _kill_left(marker)
    assert out.returncode == 1, out.stderr
    (bundle,) = runs.glob("*/incidents/*")
    third = (bundle / "summary.md").read_text().splitlines()[2]
    assert third == (
        "likely: param-server-wait — the job waits for its parameter server (no process "
        "stands out in the stacks); try: restart the parameter server"
    )
    (match,) = json.loads((bundle / "incident.json").read_text())["signatures"]
    assert match["source"] == str(mine)
    assert match["evidence"] == [
        "server.log.tail:1: waiting for the parameter server at 10.0.0.7:2222"
    ]


def test_a_signature_file_with_a_bad_regex_is_one_line_and_starts_nothing(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SIGNATURES.replace("\\S+", "(unclosed"))
    runs = tmp_path / "runs"
    for command in (["watch", "--", sys.executable, "-c", "pass"], ["dump", "--pid", "1"]):
        out = run(runs, command[0], "--signatures", str(bad), *command[1:], timeout=60)
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.splitlines()
        assert line.startswith(f"error: {bad}:8: signatures.0.match.all.0.log: the regex ")
        assert "does not compile" in line
    assert not runs.exists()
