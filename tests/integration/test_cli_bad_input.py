"""Bad input: one clear line on stderr, the right exit code, no traceback, nothing started."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, have_module, require


def harness(*args: str, runs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "--runs-dir", str(runs), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("error: ")
    for needle in needles:
        assert needle in first


@pytest.fixture
def model(tmp_path: Path) -> Path:
    # Enough of a model directory for planning (serving needs the real tiny model).
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_unknown_profile(tmp_path: Path, model: Path) -> None:
    proc = harness("plan", "--model", str(model), "--profile", "debug,nope", runs=tmp_path)
    assert_one_line_error(proc, 2, "unknown profile 'nope'", "debug", "vlm-safe", "nccl-safe")


def test_malformed_yaml(tmp_path: Path, model: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("env:\n  A: 1\n B: 2\n")
    proc = harness("plan", "--model", str(model), "--profile", str(bad), runs=tmp_path)
    assert_one_line_error(proc, 2, f"{bad}:3", "malformed YAML")


def test_unknown_key(tmp_path: Path, model: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("container:\n  ipc: host\n")
    proc = harness("serve", "--model", str(model), "--profile", str(bad), runs=tmp_path)
    assert_one_line_error(proc, 2, f"{bad}:2", "unknown key 'ipc'", "ipc_mode")
    assert not any(tmp_path.glob("runs/*")), "nothing may start on bad input"


def test_tp_zero(tmp_path: Path, model: Path) -> None:
    assert_one_line_error(
        harness("plan", "--model", str(model), "--tp", "0", runs=tmp_path), 2, "--tp"
    )


def test_missing_model_path(tmp_path: Path) -> None:
    proc = harness("serve", "--model", str(tmp_path / "absent"), runs=tmp_path)
    assert_one_line_error(proc, 2, "does not exist")
    assert "harness tiny-model" in proc.stderr


def test_engine_arg_for_a_managed_flag(tmp_path: Path, model: Path) -> None:
    proc = harness("plan", "--model", str(model), "--engine-arg", "--port 1", runs=tmp_path)
    assert_one_line_error(proc, 2, "use --port")


@pytest.mark.integration
def test_port_in_use(tmp_path: Path, model: Path) -> None:
    require(have_module("vllm"), "vLLM")
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = harness("serve", "--model", str(model), "--port", str(port), runs=tmp_path)
    assert_one_line_error(proc, 3, f"port {port}", "already in use")


def test_plan_json_has_contract_keys(tmp_path: Path, model: Path) -> None:
    import json

    proc = harness("plan", "--model", str(model), "--tp", "2", "--profile", "debug", runs=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in (
        "engine",
        "model",
        "tp",
        "profiles",
        "runtime",
        "argv",
        "env",
        "container",
        "health_url",
        "base_url",
        "deadlines",
    ):
        assert key in data
    assert data["profiles"] == ["default", "debug"]
    assert "--tensor-parallel-size" in data["argv"] and "--enforce-eager" in data["argv"]
