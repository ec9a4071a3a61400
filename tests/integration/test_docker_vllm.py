"""The real vLLM CPU build in a real container: `harness serve --runtime docker` at TP=2 with the
debug profile, and the `--format docker` / `--format compose` renderings run as they are.

These start vLLM (about a minute each on two cores): they are the few real-engine Docker tests.
Every container is removed at teardown by its label, also when a test fails.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.containerplan import LABEL_RUN_ID
from tests.conftest import REPO, free_port, require
from tests.integration.dockerutil import chat, labelled, remove_labelled
from tests.integration.harnesscli import run, spawn, stop, wait_for
from tests.integration.servers import wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.slow]

STARTUP_S = 600.0


def harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run(None, *args, timeout=timeout, cwd=REPO)


def inspect_run(docker_client: Any, run_id: str) -> dict[str, Any]:
    (container,) = labelled(docker_client, run_id)
    data: dict[str, Any] = docker_client.api.inspect_container(container.id)
    return data


def test_serve_tp2_debug_in_a_container(
    docker_client: Any, docker_image: str, tiny_model_dir: Path, docker_runs: Path
) -> None:
    """The must-show: serve at TP=2 with the debug profile, inspect, chat, down."""
    port = free_port()
    served = harness(
        "serve", "--engine", "vllm", "--model", str(tiny_model_dir), "--tp", "2",
        "--profile", "debug", "--runtime", "docker", "--image", docker_image, "--port", str(port),
        "--runs-dir", str(docker_runs), "--detach", "--startup-timeout", str(STARTUP_S),
        timeout=STARTUP_S + 120,
    )  # fmt: skip
    (run_dir,) = list(docker_runs.iterdir())
    assert served.returncode == 0, served.stderr + (run_dir / "server.log").read_text()
    run_id = run_dir.name

    inspect = inspect_run(docker_client, run_id)
    host = inspect["HostConfig"]
    assert host["IpcMode"] == "host"
    assert {c.removeprefix("CAP_") for c in host["CapAdd"]} >= {"SYS_PTRACE"}
    assert host["Privileged"] is False
    assert host["Init"] is True
    assert "CUDA_LAUNCH_BLOCKING=1" in inspect["Config"]["Env"]
    assert "VLLM_CPU_KVCACHE_SPACE=1" in inspect["Config"]["Env"]
    mounts = {m["Destination"]: m for m in inspect["Mounts"]}
    assert mounts[str(tiny_model_dir)]["RW"] is False
    assert mounts[str(run_dir)]["RW"] is True
    assert inspect["Config"]["Labels"][LABEL_RUN_ID] == run_id
    assert inspect["Config"]["Labels"]["harness.tp"] == "2"

    spec = json.loads((run_dir / "launch_spec.json").read_text())
    assert spec["container"]["labels"][LABEL_RUN_ID] == run_id
    reply = chat(spec["base_url"], spec["served_model_name"])
    assert reply["choices"][0]["message"]["content"]

    # Both TP workers run in the container and are host processes the watchdog can dump.
    top = docker_client.api.top(inspect["Id"], ps_args="-eo pid,args")
    assert sum("VLLM::Worker" in " ".join(map(str, row)) for row in top["Processes"]) >= 2
    # Output streamed into the run directory until harness detached ...
    log = run_dir / "server.log"
    assert "Uvicorn running" in log.read_text() or (
        "Application startup complete" in log.read_text()
    )
    # ... and goes on after it (a background follower): the chat request's access-log line.
    follower = psutil.Process(json.loads((run_dir / "state.json").read_text())["log_follower_pid"])
    wait_for(lambda: "/v1/chat/completions" in log.read_text(), 30, "the access-log line")

    down = harness("down", run_id, "--runs-dir", str(docker_runs))
    assert down.returncode == 0, down.stderr
    assert labelled(docker_client, run_id) == []
    assert not follower.is_running() or follower.status() == psutil.STATUS_ZOMBIE
    assert log.read_text() == (run_dir / "container.log").read_text()


def _run_id_of(text: str) -> str:
    match = re.search(r"harness\.run_id[=:] ?'?([\w.-]+)", text)
    assert match, text
    return match.group(1)


def test_docker_run_line_serves_the_model(
    docker_client: Any, docker_image: str, tiny_model_dir: Path, docker_runs: Path
) -> None:
    port = free_port()
    planned = harness(
        "plan", "--engine", "vllm", "--model", str(tiny_model_dir), "--tp", "1",
        "--runtime", "docker", "--image", docker_image, "--port", str(port), "--runs-dir", str(docker_runs),
        "--profile", "eager",
        "--format", "docker",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    text = planned.stdout
    assert text.startswith("docker run")
    run_id = _run_id_of(text)
    (docker_runs / run_id).mkdir()  # for teardown by label, as harness serve would create it
    log = docker_runs / run_id / "docker-run.log"
    with open(log, "w") as out:
        proc = spawn(["bash", "-c", text], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", STARTUP_S, proc=proc, log=log)
        reply = chat(f"http://127.0.0.1:{port}", tiny_model_dir.name)
        assert reply["model"] == tiny_model_dir.name
        assert inspect_run(docker_client, run_id)["HostConfig"]["Init"] is True
    finally:
        # `docker run` in the foreground proxies SIGTERM to the container; --rm removes it.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop(proc)
    remove_labelled(docker_client, run_id)
    assert labelled(docker_client, run_id) == []


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return ["docker", "compose"] if probe.returncode == 0 else None


def test_compose_file_serves_the_model(
    docker_client: Any, docker_image: str, tiny_model_dir: Path, docker_runs: Path, tmp_path: Path
) -> None:
    compose = _compose_command()
    require(compose is not None, "docker-compose (Debian package docker-compose) or docker compose")
    assert compose is not None
    port = free_port()
    planned = harness(
        "plan", "--engine", "vllm", "--model", str(tiny_model_dir), "--tp", "1",
        "--runtime", "docker", "--image", docker_image, "--port", str(port), "--runs-dir", str(docker_runs),
        "--profile", "eager",
        "--format", "compose",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    run_id = _run_id_of(planned.stdout)
    (docker_runs / run_id).mkdir()
    file = tmp_path / "compose.yaml"
    file.write_text(planned.stdout)
    project = ["-f", str(file), "-p", f"h{run_id.lower().replace('-', '')}"[:60]]
    up = subprocess.run(
        [*compose, *project, "up", "-d"], capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stderr
        (container,) = labelled(docker_client, run_id)
        wait_healthy(
            f"http://127.0.0.1:{port}/health",
            STARTUP_S,
            alive=lambda: container.reload() or container.status == "running",
        )
        reply = chat(f"http://127.0.0.1:{port}", tiny_model_dir.name)
        assert reply["model"] == tiny_model_dir.name
        host = inspect_run(docker_client, run_id)["HostConfig"]
        assert (host["IpcMode"], host["NetworkMode"], host["Init"]) == ("host", "host", True)
    finally:
        subprocess.run([*compose, *project, "down", "-t", "20"], capture_output=True, timeout=120)
    assert labelled(docker_client, run_id) == []
