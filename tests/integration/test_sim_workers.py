"""Stopping ``harness sim --tp 2`` during a worker stall: quiet, and no worker left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _wait_for(predicate: object, what: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "how",
    ["sigterm-to-the-server", "ctrl-c-to-the-group"],
)
def test_stop_during_a_worker_stall_prints_no_traceback(how: str, tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness",
                "sim",
                "--port",
                str(port),
                "--startup-s",
                "0.1",
                "--tp",
                "2",
                "--fault",
                "worker-stall:rank=1,at=0,mode=sleep",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    workers: list[psutil.Process] = []
    try:

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(healthy, "the simulator to be healthy")
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        # The step stalls: rank 1 sleeps in execute_model, rank 0 waits in all_reduce.
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(
                url + "/v1/completions",
                json={"prompt": "x", "max_tokens": 4},
                timeout=httpx.Timeout(10, read=1),
            )
        _wait_for(lambda: "injected worker-stall at step" in log.read_text(), "the stall")
        if how == "sigterm-to-the-server":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers left behind: {alive}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for w in workers:
            with contextlib.suppress(psutil.Error):
                w.kill()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "Task exception was never retrieved" not in text, text[-3000:]
