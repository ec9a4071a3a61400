"""`harness serve` starts the real vLLM CPU server with the tiny model at TP=1 and TP=2 and it
answers a chat completion and a streamed completion; Ctrl-C / `harness down` leave nothing."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from harness import procgroup
from harness.records import read_json
from tests.conftest import free_port, have_module, require
from tests.integration.harnesscli import finish, only_dir, run, running_members, start
from tests.integration.servers import wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def serve_args(port: int, *extra: str) -> list[str]:
    """``harness serve`` of the tiny model in eager mode on ``port`` (the model comes first)."""
    return ["--profile", "eager", "--port", str(port), *extra]


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


@pytest.fixture
def model(tiny_model_dir: Path) -> Iterator[Path]:
    require(have_module("vllm"), "vLLM CPU build (make install-vllm)")
    yield tiny_model_dir


def test_tp1_detached_then_down(model: Path, campaign_runs: Path) -> None:
    runs = campaign_runs
    port = free_port()
    out = run(runs, "serve", "--model", str(model), *serve_args(port, "--detach"), timeout=420)
    assert out.returncode == 0, out.stderr
    assert "ready in" in out.stderr
    run_dir = only_dir(runs)
    state = json.loads((run_dir / "state.json").read_text())
    procs = [psutil.Process(pid) for pid in procgroup.tree(state["pid"])]
    spec = json.loads((run_dir / "launch_spec.json").read_text())
    assert spec["tp"] == 1 and spec["argv"][-1] == "--enforce-eager"
    chat_and_stream(f"http://127.0.0.1:{port}", spec["served_model_name"])
    assert (run_dir / "server.log").stat().st_size > 0
    ps = run(runs, "ps", timeout=60)
    assert run_dir.name in ps.stdout
    down = run(runs, "down", run_dir.name, timeout=120)
    assert down.returncode == 0 and f"stopped {run_dir.name}" in down.stdout
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"left running: {alive}"


def test_tp2_foreground_then_ctrl_c(model: Path, campaign_runs: Path) -> None:
    runs = campaign_runs
    port = free_port()
    proc = start(runs, "serve", "--model", str(model), *serve_args(port, "--tp", "2", "--no-watch"))
    wait_healthy(f"http://127.0.0.1:{port}/health", 420, proc=proc)
    run_dir = only_dir(runs)
    spec = json.loads((run_dir / "launch_spec.json").read_text())
    assert spec["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    server = [
        psutil.Process(pid) for pid in procgroup.tree(read_json(run_dir / "state.json")["pid"])
    ]
    names = " ".join(" ".join(p.cmdline()) + p.name() for p in server if p.is_running())
    assert "Worker_TP0" in names and "Worker_TP1" in names, names
    chat_and_stream(f"http://127.0.0.1:{port}", spec["served_model_name"])
    proc.send_signal(signal.SIGINT)
    res = finish(proc, 120)
    assert res.returncode == 0, res.stderr
    _, alive = psutil.wait_procs(server, timeout=30)
    assert not alive, f"left running after Ctrl-C: {alive}"
    assert read_json(run_dir / "state.json")["status"] == "stopped"


def test_startup_deadline_stops_the_group(model: Path, campaign_runs: Path) -> None:
    runs = campaign_runs
    port = free_port()
    proc = run(
        runs, "serve", "--model", str(model),
        *serve_args(port, "--startup-timeout", "4", "--on-hang", "stop"), timeout=180,
    )  # fmt: skip
    run_dir = only_dir(runs)
    state = read_json(run_dir / "state.json")
    assert proc.returncode == 1, proc.stderr
    assert "not healthy after" in proc.stderr and "startup deadline" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert state["status"] == "stopped"
    summary = (run_dir / "incidents" / "1" / "summary.md").read_text()
    assert summary.startswith("startup-hang"), summary[:300]
    assert (
        not psutil.pid_exists(state["pid"])
        or psutil.Process(state["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    # Nothing of the group or session may survive.
    assert running_members(state["pid"]) == []
