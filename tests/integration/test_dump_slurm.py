"""``harness plan --format sbatch`` submitted as printed to the real one-node SLURM cluster of
``scripts/slurm.sh`` (the simulated engine at TP=2 under ``harness serve``), then ``harness dump
--slurm-job ID`` against that running job (``srun --jobid ID --overlap``): every process of
the job's node in one bundle, the node in every row; ``scancel`` stops harness and its server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, require
from tests.integration.harnesscli import run

pytestmark = pytest.mark.integration


def slurm_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


def harness(runs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(runs, *args, timeout=300)  # its whole tree stopped past the timeout


def job_state(job: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip() or "GONE"


def test_the_printed_sbatch_script_runs_and_dump_slurm_job_captures_it(tmp_path: Path) -> None:
    require(slurm_up(), "a running SLURM cluster (scripts/slurm.sh up)")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    require(os.path.exists(py_spy), "py-spy")
    runs = tmp_path / "runs"
    port = free_port()
    plan = harness(runs, "plan", "--engine", "sim", "--model", "sim", "--tp", "2", "--port",
                   str(port), "--format", "sbatch")  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    script = tmp_path / "serve.sbatch"
    script.write_text(plan.stdout)
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 120
        healthy = False
        while time.monotonic() < deadline and not healthy:
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert healthy, (job_state(job), list(tmp_path.glob("slurm-*.out")))
        res = harness(runs, "dump", "--slurm-job", job, "--remote-py-spy", py_spy, "--gap", "0.5")
        assert res.returncode == 0, res.stderr
        bundle = Path(res.stdout.strip().splitlines()[-1])
        incident = json.loads((bundle / "incident.json").read_text())
        node = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
        assert incident["nodes"] == [node]
        procs = incident["processes"]
        assert {p["host"] for p in procs} == {node}
        # harness serve (the batch step) and the simulated engine's processes, with stacks.
        assert any("harness" in p["cmdline"] and " serve " in p["cmdline"] for p in procs)
        sim = [p for p in procs if p["role"].startswith("sim")]
        assert len(sim) >= 3, [(p["role"], p["cmdline"][:80]) for p in procs]
        for p in sim:
            text = (bundle / f"stacks/{node}-{p['pid']}.txt").read_text()
            assert text.count(f"# node {node}, dump ") == 2 and "Thread " in text
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and job_state(job) not in ("GONE", "CANCELLED"):
            time.sleep(0.5)
    # scancel reached harness serve, which stopped its server.
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "stopped; run directory:" in log, log[-2000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
