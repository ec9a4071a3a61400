"""Bad input: one clear line on stderr, the right exit code, no traceback, nothing started."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, have_module, require
from tests.integration.harnesscli import run


def harness(
    *args: str, runs: Path, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return run(runs, *args, prefix=prefix, timeout=120)


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


# ----------------------------------------------------------------------------- TP


def test_tp_that_does_not_split_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    # 4 attention heads, 2 KV heads: TP=3 is refused at plan time, not minutes into vLLM's start.
    # --device cuda: the valid values must not depend on this host's cores.
    proc = harness(
        "plan", "--model", str(tiny_model_dir), "--tp", "3", "--device", "cuda", runs=tmp_path
    )
    assert_one_line_error(proc, 2, "--tp 3", "4 attention heads", "(valid: 1, 2, 4)")
    assert f"{tiny_model_dir}/config.json" in proc.stderr  # the hint says what was checked


def test_more_cpu_ranks_than_cores(tmp_path: Path, model: Path) -> None:
    # One core, whatever this host has: two ranks would be bound to it.
    require(shutil.which("taskset") is not None, "taskset (util-linux)")
    one_core = str(min(os.sched_getaffinity(0)))
    proc = harness(
        "plan",
        *("--model", str(model), "--tp", "2", "--device", "cpu"),
        runs=tmp_path,
        prefix=("taskset", "-c", one_core),
    )
    assert_one_line_error(proc, 2, "--tp 2 needs 2 cores", "this host has 1 (valid: 1)")


def test_hub_id_is_not_checked(tmp_path: Path) -> None:
    proc = harness("plan", "--model", "org/model", "--tp", "3", "--device", "cuda", runs=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tp"] == 3


def test_lmdeploy_in_docker_on_a_gpu_less_host(tmp_path: Path, model: Path) -> None:
    proc = harness(
        "plan",
        *("--engine", "lmdeploy", "--runtime", "docker", "--model", str(model)),
        *("--device", "cpu"),
        runs=tmp_path,
    )
    assert_one_line_error(proc, 2, "no default image", "LMDeploy has no CPU backend")
    assert "hint: plan for a GPU host with --device cuda" in proc.stderr


# ----------------------------------------------------------------------------- files users hand in

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
BAD_CONTENT: dict[str, bytes] = {
    "binary": PNG,
    "latin-1": "description: caf\u00e9\n".encode("latin-1"),
    "empty": b"",
}
PROBLEMS = {
    "binary": "not UTF-8 text (byte 0x89 at line 1, column 1, byte offset 0)",
    "latin-1": "not UTF-8 text (byte 0xe9 at line 1, column 17, byte offset 16)",
    "empty": "empty file",
    "directory": "is a directory",
    "unreadable": "permission denied",
    "huge": "is over the",
}
CAPS = {
    "profile": 1024**2,
    "workload": 1024**2,
    "prompt file": 1024**3,
    "model config": 16 * 1024**2,
}


def _spoil(path: Path, case: str, cap: int) -> None:
    """Make ``path`` the bad file of ``case``."""
    if case == "directory":
        path.mkdir()
        return
    if case == "huge":
        with path.open("wb") as fh:
            fh.truncate(cap + 1)  # sparse: no disk space, no reading needed to refuse it
        return
    path.write_bytes(BAD_CONTENT.get(case, b"description: fine\n"))
    if case == "unreadable":
        path.chmod(0)


def _command(loader: str, d: Path) -> tuple[Path, list[str]]:
    """The file ``loader`` reads and the command line that makes it read it."""
    model = d / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    # The server is never contacted: the input is refused first.
    load = ["load", "--url", "http://127.0.0.1:9", "--concurrency", "1", "--requests", "1"]
    if loader == "profile":
        return d / "p.yaml", ["plan", "--model", str(model), "--profile", str(d / "p.yaml")]
    if loader == "workload":
        return d / "w.yaml", [*load, "--workload", str(d / "w.yaml")]
    if loader == "prompt file":
        (d / "w.yaml").write_text("prompt: {source: jsonl, path: prompts.jsonl}\n")
        return d / "prompts.jsonl", [*load, "--workload", str(d / "w.yaml"), "--model", "m"]
    (model / "config.json").unlink()
    return model / "config.json", ["plan", "--model", str(model)]


def _without_root_file_access() -> tuple[str, ...]:
    """A command prefix under which a chmod 000 file is unreadable even for root: root reads
    any file through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so the child runs without them."""
    if os.geteuid() != 0:
        return ()
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


@pytest.mark.parametrize("case", list(PROBLEMS))
@pytest.mark.parametrize("loader", list(CAPS))
def test_every_loader_refuses_a_bad_file_in_one_line(
    tmp_path: Path, loader: str, case: str
) -> None:
    path, args = _command(loader, tmp_path)
    _spoil(path, case, CAPS[loader])
    prefix = _without_root_file_access() if case == "unreadable" else ()
    proc = harness(*args, runs=tmp_path / "runs", prefix=prefix)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: "), proc.stderr
    assert PROBLEMS[case] in lines[0], proc.stderr


def test_duplicate_key_in_a_profile(tmp_path: Path, model: Path) -> None:
    bad = tmp_path / "dup.yaml"
    bad.write_text("env:\n  NCCL_DEBUG: INFO\nwarning: x\nenv:\n  A: 1\n")
    proc = harness("plan", "--model", str(model), "--profile", str(bad), runs=tmp_path)
    assert_one_line_error(proc, 2, f"{bad}:4: duplicate key 'env' (first on line 1)")
