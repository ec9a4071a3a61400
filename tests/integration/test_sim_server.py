"""The simulator as a real process: routes, metrics, TP workers and every fault kind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import require
from tests.integration.harnesscli import run, wait_for
from tests.integration.servers import sim_server

pytestmark = pytest.mark.integration


def _wait_for_line(path: Path, needle: str, deadline_s: float = 60) -> None:
    wait_for(lambda: needle in path.read_text(errors="replace"), deadline_s, f"{needle!r} logged")


def _listening(url: str) -> bool:
    try:
        httpx.get(url + "/v1/models", timeout=2)
    except httpx.ConnectError:
        return False
    return True


def test_routes_stream_usage_and_metrics(tmp_path: Path) -> None:
    with sim_server(
        "--model-name", "tiny", "--itl-ms", "2", "--ttft-ms", "1", log=tmp_path / "log"
    ) as (
        url,
        _,
    ):
        models = httpx.get(url + "/v1/models").json()
        assert models["data"][0]["id"] == "tiny"
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "a b c"}],
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            text = r.read().decode()
        events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        plain = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}).json()
        assert plain["usage"]["completion_tokens"] == 3 and plain["choices"][0]["text"]
        bad = httpx.post(url + "/v1/completions", json={"model": "other", "prompt": "x"})
        assert bad.status_code == 404 and "does not exist" in bad.json()["error"]["message"]
        metrics = httpx.get(url + "/metrics").text
        for name in (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
        ):
            assert name in metrics
        assert 'vllm:generation_tokens_total{model_name="tiny"} 8.0' in metrics
    log = (tmp_path / "log").read_text()
    for line in ("Loading weights", "Starting vLLM API server", "Application startup complete."):
        assert line in log


def test_worker_stall_looks_like_a_tp_collective_hang(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with sim_server(
        "--tp", "2", "--itl-ms", "5", "--fault", "worker-stall:rank=1,at=0,mode=sleep", log=log
    ) as (url, proc):
        children = psutil.Process(proc.pid).children(recursive=True)
        names = sorted(c.name() for c in children)
        assert names == ["sim::Worker_TP0", "sim::Worker_TP1"]
        assert any("sim::Worker_TP1" in " ".join(c.cmdline()) for c in children)
        body = {"prompt": "x", "max_tokens": 50, "stream": True}
        with (
            pytest.raises(httpx.ReadTimeout),
            httpx.stream(
                "POST", url + "/v1/completions", json=body, timeout=httpx.Timeout(10, read=2)
            ) as r,
        ):
            r.read()
        _wait_for_line(log, "injected worker-stall at step")
        assert httpx.get(url + "/health").status_code == 200  # the API still answers
        metrics = httpx.get(url + "/metrics").text
        assert 'vllm:num_requests_running{model_name="sim-model"} 1.0' in metrics
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        require(Path(pyspy).exists(), "py-spy")
        stacks = {}
        for name, pid in [
            ("tp0", next(c.pid for c in children if c.name() == "sim::Worker_TP0")),
            ("api", proc.pid),
        ]:
            dump = subprocess.run(
                [pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
            )
            require(dump.returncode == 0, f"py-spy dump permitted ({dump.stderr.strip()[:80]})")
            stacks[name] = dump.stdout
        assert "all_reduce" in stacks["tp0"]  # the peer waits in the collective
        assert "collective_rpc" in stacks["api"]  # the engine waits for the workers
    for c in children:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE


def test_crash_fault_exits(tmp_path: Path) -> None:
    with sim_server("--fault", "crash:at=0.5,code=3", log=tmp_path / "log") as (_, proc):
        assert proc.wait(timeout=60) == 3
    assert "fatal error" in (tmp_path / "log").read_text()


def test_startup_hang_never_listens(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with sim_server("--fault", "startup-hang:p=1", wait_ready=False, log=log) as (url, proc):
        _wait_for_line(log, "Initializing distributed environment")
        assert proc.poll() is None
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    assert "Application startup complete" not in log.read_text()


def test_http_error_and_slow_health(tmp_path: Path) -> None:
    with sim_server(
        "--fault", "http-error:p=1,status=503", "--fault", "slow-health:ms=3000", wait_ready=False
    ) as (url, _):
        wait_for(lambda: _listening(url), 60, "the simulator to listen")  # /health is slow
        r = httpx.post(url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == 503
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url + "/health", timeout=0.2)
        assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_port_in_use_is_exit_3() -> None:
    with sim_server() as (url, _):
        port = url.rsplit(":", 1)[1]
        res = run(None, "sim", "--port", port, timeout=60)
        assert res.returncode == 3 and "already in use" in res.stderr
