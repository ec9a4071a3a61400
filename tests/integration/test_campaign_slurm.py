"""Campaigns fanned out on a real SLURM cluster (the one-node cluster of scripts/slurm.sh):
every array task's start or cell gathered into one summary, a task SLURM killed recorded with
SLURM's state."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.records import iter_jsonl, read_json
from tests.conftest import free_port, require
from tests.integration.harnesscli import finish, only_dir, run, start, stop, wait_for

pytestmark = pytest.mark.integration


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture
def slurm() -> None:
    require(slurm_up(), "a running SLURM cluster (scripts/slurm.sh up)")


def test_repro_startup_on_slurm_gathers_every_start(campaign_runs: Path, slurm: None) -> None:
    res = run(
        campaign_runs,
        "repro-startup",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--runs",
        "10",
        "--slurm",
        "--fault",
        "startup-hang:p=0.3",
        "--startup-timeout",
        "4",
        "--seed",
        "3",
        "--port",
        str(free_port()),
        timeout=600,
    )
    camp = only_dir(campaign_runs)
    job = read_json(camp / "campaign.json")["slurm_job"]
    assert f"submitted SLURM job {job}" in res.stderr
    starts = list(iter_jsonl(camp / "starts.jsonl"))
    assert [s["n"] for s in starts] == list(range(1, 11))
    assert {s["slurm_job"] for s in starts} == {f"{job}_{n}" for n in range(1, 11)}
    summary = read_json(camp / "summary.json")["startup"]
    injected = sum(
        (camp / s["run_dir"] / "server.log").read_text().count("startup-hang fault:")
        for s in starts
    )
    assert summary["runs"] == 10 and summary["hangs"] == injected
    assert res.returncode == (1 if injected else 0)
    # Tasks may share the node: each served on its own port.
    ports = {read_json(camp / s["run_dir"] / "launch_spec.json")["port"] for s in starts}
    assert len(ports) == 10
    assert (camp / "report.html").exists()
    assert "#SBATCH --array=1-10" in (camp / "slurm" / "array.sbatch").read_text()


def test_a_task_slurm_cancelled_is_recorded_with_its_state(
    campaign_runs: Path, slurm: None
) -> None:
    proc = start(
        campaign_runs,
        "repro-startup",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--runs",
        "2",
        "--slurm",
        "--fault",
        "startup-hang:p=1",
        "--startup-timeout",
        "20",
        "--port",
        str(free_port()),
    )
    try:
        wait_for(
            lambda: (
                any(campaign_runs.iterdir())
                and "slurm_job" in read_json(only_dir(campaign_runs) / "campaign.json")
            ),
            timeout=60,
            what="the array job",
        )
        job = read_json(only_dir(campaign_runs) / "campaign.json")["slurm_job"]
        wait_for(
            lambda: (
                "R"
                in subprocess.run(
                    ["squeue", "-h", "-r", "-j", f"{job}_2", "-o", "%t"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                ).stdout
            ),
            timeout=120,
            what="task 2 running",
        )
        subprocess.run(["scancel", f"{job}_2"], check=True, timeout=30)
        res = finish(proc, timeout=300)
    finally:
        stop(proc)
    camp = only_dir(campaign_runs)
    starts = {s["n"]: s for s in iter_jsonl(camp / "starts.jsonl")}
    assert starts[1]["outcome"] == "hang"
    assert starts[2]["outcome"] == "slurm-cancelled", starts[2]
    summary = read_json(camp / "summary.json")
    assert summary["startup"]["runs"] == 1
    assert summary["lost"] == [
        {"n": 2, "outcome": "slurm-cancelled", "detail": starts[2]["detail"]}
    ]
    assert res.returncode == 1


def test_compare_on_slurm_gathers_every_cell(campaign_runs: Path, slurm: None) -> None:
    res = run(
        campaign_runs,
        "compare",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--tp",
        "1,2",
        "--repeats",
        "2",
        "--requests",
        "20",
        "-c",
        "2",
        "--max-tokens",
        "16",
        "--slurm",
        "--port",
        str(free_port()),
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    camp = only_dir(campaign_runs)
    lines = list(iter_jsonl(camp / "cells.jsonl"))
    assert [(c["label"], c["repeat"]) for c in lines] == [
        ("tp1", 1),
        ("tp2", 1),
        ("tp1", 2),
        ("tp2", 2),
    ]
    cells = read_json(camp / "summary.json")["compare"]["cells"]
    assert [c["requests"]["completed"] for c in cells] == [40, 40]
    assert (camp / "report.html").exists()
