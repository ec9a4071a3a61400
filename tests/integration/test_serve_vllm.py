"""`harness serve` starts the real vLLM CPU server with the tiny model at TP=1 and TP=2 and it
answers a chat completion and a streamed completion; Ctrl-C / `harness down` leave nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port, have_module, require

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def harness_cmd(runs: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness", "--runs-dir", str(runs), *args]


def serve_cmd(runs: Path, model: Path, port: int, *extra: str) -> list[str]:
    """``harness serve`` of the tiny model in eager mode on ``port``."""
    return harness_cmd(
        runs, "serve", "--model", str(model), "--profile", "eager", "--port", str(port), *extra
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, deadline_s: float = 420) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"harness serve exited early with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not healthy after {deadline_s} s")


def chat_and_stream(base: str, model: str) -> None:
    chat = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert body["choices"][0]["message"]["content"] is not None
    assert body["usage"]["completion_tokens"] > 0

    chunks = 0
    text = ""
    with httpx.stream(
        "POST",
        f"{base}/v1/completions",
        json={
            "model": model,
            "prompt": "the model",
            "max_tokens": 12,
            "stream": True,
            "ignore_eos": True,
        },
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks += 1
                text += json.loads(line[6:])["choices"][0]["text"]
    assert chunks >= 2, "a streamed completion arrives in several chunks"
    assert text


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


@pytest.fixture
def model(tiny_model_dir: Path) -> Iterator[Path]:
    require(have_module("vllm"), "vLLM CPU build (make install-vllm)")
    yield tiny_model_dir


def test_tp1_detached_then_down(model: Path, runs_dir: Path) -> None:
    port = free_port()
    out = subprocess.run(
        serve_cmd(runs_dir, model, port, "--detach"),
        capture_output=True,
        text=True,
        timeout=420,
    )
    run = next(runs_dir.iterdir())
    state = json.loads((run / "state.json").read_text())
    procs = tree(state["pid"])
    try:
        assert out.returncode == 0, out.stderr
        assert "ready in" in out.stderr
        spec = json.loads((run / "launch_spec.json").read_text())
        assert spec["tp"] == 1 and spec["argv"][-1] == "--enforce-eager"
        chat_and_stream(f"http://127.0.0.1:{port}", spec["served_model_name"])
        assert (run / "server.log").stat().st_size > 0
        ps = subprocess.run(harness_cmd(runs_dir, "ps"), capture_output=True, text=True, timeout=60)
        assert run.name[:15] in ps.stdout
        down = subprocess.run(
            harness_cmd(runs_dir, "down", run.name), capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0 and f"stopped {run.name}" in down.stdout
        _, alive = psutil.wait_procs(procs, timeout=30)
        assert not alive, f"left running: {alive}"
    finally:
        kill_tree(procs)


def test_tp2_foreground_then_ctrl_c(model: Path, runs_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        serve_cmd(runs_dir, model, port, "--tp", "2", "--no-watch"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server: list[psutil.Process] = []
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        run = next(runs_dir.iterdir())
        spec = json.loads((run / "launch_spec.json").read_text())
        assert spec["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
        server = tree(json.loads((run / "state.json").read_text())["pid"])
        names = " ".join(" ".join(p.cmdline()) + p.name() for p in server if p.is_running())
        assert "Worker_TP0" in names and "Worker_TP1" in names, names
        chat_and_stream(f"http://127.0.0.1:{port}", spec["served_model_name"])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        _, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, f"left running after Ctrl-C: {alive}"
        assert json.loads((run / "state.json").read_text())["status"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_tree(server)


def test_startup_deadline_stops_the_group(model: Path, runs_dir: Path) -> None:
    port = free_port()
    proc = subprocess.run(
        serve_cmd(runs_dir, model, port, "--startup-timeout", "4", "--on-hang", "stop"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    run = next(runs_dir.iterdir())
    state = json.loads((run / "state.json").read_text())
    try:
        assert proc.returncode == 1, proc.stderr
        assert "not healthy after" in proc.stderr and "startup deadline" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert state["status"] == "stopped"
        summary = (run / "incidents" / "1" / "summary.md").read_text()
        assert summary.startswith("startup-hang"), summary[:300]
        assert (
            not psutil.pid_exists(state["pid"])
            or psutil.Process(state["pid"]).status() == psutil.STATUS_ZOMBIE
        )
        # Nothing of the group may survive.
        leftovers = [p for p in psutil.process_iter() if _pgid(p.pid) == state["pid"]]
        assert not leftovers
    finally:
        kill_tree(tree(state["pid"]))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
