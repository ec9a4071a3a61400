"""``harness plan --format shell`` prints a script that serves as it is: run with ``sh`` (no
harness in between), the simulated engine at TP=2 answers /health and a completion, and Ctrl-C
or SIGTERM to the script stops it and both of its workers."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.integration.harnesscli import finish, run, spawn
from tests.integration.servers import wait_healthy

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("sig", "exit_code"),
    # Ctrl-C: the simulator ends itself (exit 0); SIGTERM: the default action, as for vLLM.
    [(signal.SIGINT, 0), (signal.SIGTERM, -signal.SIGTERM)],
)
def test_the_printed_script_serves_and_stops_cleanly(
    tmp_path: Path, sig: signal.Signals, exit_code: int
) -> None:
    runs = tmp_path / "runs"
    port = free_port()
    planned = run(
        runs, "plan", "--engine", "sim", "--model", "sim", "--tp", "2", "--port", str(port),
        "--format", "shell", timeout=60,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    script = tmp_path / "serve.sh"
    script.write_text(planned.stdout)
    assert planned.stdout.startswith("#!/bin/sh\n")
    assert not runs.exists()  # planning starts and records nothing
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = spawn(["sh", str(script)], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base + "/health", 60, proc=proc, log=log)
    # The script execs the server: the process started is the server, with its two workers.
    workers = psutil.Process(proc.pid).children()
    assert sorted(w.name() for w in workers) == ["sim::Worker_TP0", "sim::Worker_TP1"]
    answer = httpx.post(
        base + "/v1/completions", json={"model": "sim", "prompt": "hi", "max_tokens": 3}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 3
    # The run directory of the plan exists (the script made it), for the engine's files.
    run_id = planned.stdout.splitlines()[1].removeprefix("# harness plan ").split(":")[0]
    assert [p.name for p in runs.iterdir()] == [run_id]
    proc.send_signal(sig)
    assert finish(proc, 60).returncode == exit_code
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers left running: {alive}"
    assert "Traceback" not in log.read_text()
