"""Every command takes --runs-dir, before or after its name (README), even the ones that write
no run: tiny-model and sim accept it quietly."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.harnesscli import run


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    """``harness ARGS`` exactly as given (where --runs-dir goes is what is tested)."""
    return run(None, *args, timeout=120)


@pytest.fixture
def built_model(tmp_path: Path) -> Path:
    # tiny-model leaves a directory that already holds a model alone, without importing torch:
    # enough to see the command line accepted.
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    return d


@pytest.mark.parametrize("where", ["before", "after"])
def test_tiny_model_takes_runs_dir(tmp_path: Path, built_model: Path, where: str) -> None:
    runs = ["--runs-dir", str(tmp_path / "runs")]
    args = (
        [*runs, "tiny-model", str(built_model)]
        if where == "before"
        else ["tiny-model", str(built_model), *runs]
    )
    proc = harness(*args)
    assert proc.returncode == 0, proc.stderr
    assert f"tiny model in {built_model}" in proc.stdout
    assert proc.stderr == ""
    assert not (tmp_path / "runs").exists(), "tiny-model writes no run"


@pytest.mark.parametrize("where", ["before", "after"])
def test_sim_takes_runs_dir_without_a_warning(tmp_path: Path, where: str) -> None:
    # A busy port ends the simulator right after it parsed its command line (exit 3), after
    # the point where it warns about arguments it ignores.
    port = free_port()
    runs = ["--runs-dir", str(tmp_path / "runs")]
    sim = ["sim", "--port", str(port), "--startup-s", "0"]
    args = [*runs, *sim] if where == "before" else [*sim, *runs]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = harness(*args)
    assert proc.returncode == 3, proc.stderr
    output = proc.stdout + proc.stderr  # the simulator logs on stdout, like vLLM
    assert "ignoring" not in output and "--runs-dir" not in output, output
    assert (
        proc.stderr.strip().splitlines()[0] == f"error: port {port} on 127.0.0.1 is already in use"
    )
