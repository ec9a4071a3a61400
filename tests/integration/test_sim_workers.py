"""Stopping ``harness sim --tp 2`` during a worker stall: quiet, and no worker left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.harnesscli import wait_for
from tests.integration.servers import sim_server

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "how",
    ["sigterm-to-the-server", "ctrl-c-to-the-group"],
)
def test_stop_during_a_worker_stall_prints_no_traceback(how: str, tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    with sim_server("--tp", "2", "--fault", "worker-stall:rank=1,at=0,mode=sleep", log=log) as (
        url,
        proc,
    ):
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        # The step stalls: rank 1 sleeps in execute_model, rank 0 waits in all_reduce.
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(
                url + "/v1/completions",
                json={"prompt": "x", "max_tokens": 4},
                timeout=httpx.Timeout(10, read=1),
            )
        wait_for(lambda: "injected worker-stall at step" in log.read_text(), 60, "the stall")
        if how == "sigterm-to-the-server":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the simulator did not stop after {how}")
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers left behind: {alive}"
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "Task exception was never retrieved" not in text, text[-3000:]
