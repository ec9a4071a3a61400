"""harness shard: vLLM's own save_sharded_state on the CPU backend, verified against the source;
bad input refused before any engine starts; LMDeploy (no offline conversion any more) refused,
which its real command-line parser confirms; and, on a GPU machine, the round trip."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, have_module, require
from tests.integration.harnesscli import run, stop_all_under

pytestmark = pytest.mark.integration

LINEAR = ("qkv_proj.weight", "o_proj.weight", "gate_up_proj.weight", "down_proj.weight")


def harness(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        "HARNESS_SHARDS_DIR": str(tmp_path / "shards"),
        "HARNESS_MODELS_DIR": str(tmp_path / "models"),
    }
    return run(tmp_path / "runs", *args, env=env, timeout=timeout)


@pytest.fixture
def vllm_here() -> None:
    require(have_module("vllm"), "vLLM's CPU build (make install-vllm)")


def test_cpu_shard_is_refused_as_incomplete_naming_the_missing_tensors(
    tiny_model_dir: Path, tmp_path: Path, vllm_here: None
) -> None:
    # float32: the dtype at which vLLM's CPU backend repacks every linear layer (oneDNN) and
    # drops its weight, on AVX2 and AVX-512 machines alike.
    proc = harness(
        tmp_path, "shard", str(tiny_model_dir), "--tp", "2", "--profile", "eager",
        "--engine-arg", "--dtype float32",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith(
        "error: the sharded copy for TP 2 is incomplete and was not kept: 8 of 15 tensors the "
        "loader expects are missing (model.layers.0.mlp.down_proj.weight, "
    )
    for layer in (0, 1):
        for suffix in LINEAR:
            assert f"model.layers.{layer}." in error and suffix in error
    assert "Cause: vLLM's CPU backend repacks the linear layers" in error
    assert "Missing keys ... in loaded state!" in error
    assert "Traceback" not in proc.stderr
    # Nothing half-written is left as if complete, and no plan can serve it.
    assert not any(p for p in (tmp_path / "shards").rglob("*") if p.is_file())
    (run,) = (tmp_path / "runs").iterdir()
    record = json.loads((run / "shard.json").read_text())
    assert record["meta"]["complete"] is False and len(record["meta"]["missing"]) == 8
    planned = harness(
        tmp_path,
        "plan",
        "--model",
        str(tiny_model_dir),
        "--tp",
        "2",
        "--engine-arg",
        "--dtype float32",
    )
    assert planned.returncode == 0 and json.loads(planned.stdout)["sharded_copy"] is None
    assert "sharded_state" not in planned.stdout


def test_bad_input_is_refused_before_any_engine_starts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    tp3 = harness(tmp_path, "shard", str(tiny_model_dir), "--tp", "3")
    assert tp3.returncode == 2 and "--tp 3 does not fit" in tp3.stderr
    hub = harness(tmp_path, "shard", "org/absent-model", "--tp", "2")
    assert hub.returncode == 2 and "has no completed local copy" in hub.stderr
    other = tmp_path / "other-shard"
    other.mkdir()
    (other / "harness-shard.json").write_text(
        json.dumps(
            {
                "complete": True,
                "engine": "vllm",
                "engine_version": "0.32.0",
                "device": "cpu",
                "tp": 2,
                "source": {"path": "/models/another", "fingerprint": {}},
            }
        )
    )
    taken = harness(tmp_path, "shard", str(tiny_model_dir), "--tp", "2", "--dest", str(other))
    assert taken.returncode == 2, taken.stderr
    assert f"--dest {other} holds a shard of another model (/models/another)" in taken.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    unwritable = harness(
        tmp_path, "shard", str(tiny_model_dir), "--tp", "2", "--dest", str(afile / "d")
    )
    assert unwritable.returncode == 2 and "not a writable directory" in unwritable.stderr
    lmdeploy = harness(tmp_path, "shard", str(tiny_model_dir), "--tp", "2", "--engine", "lmdeploy")
    assert lmdeploy.returncode == 2 and "`lmdeploy convert` was removed" in lmdeploy.stderr
    for proc in (tp3, hub, taken, unwritable, lmdeploy):
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def test_lmdeploys_own_parser_has_no_convert_command() -> None:
    """Why `harness shard --engine lmdeploy` refuses: LMDeploy 0.18's real command line has no
    offline conversion to run (checked against its parser, as the serve argv is)."""
    exe = REPO / ".venv-lmdeploy-cli" / "bin" / "lmdeploy"
    require(exe.exists(), "LMDeploy's parser environment (make install-lmdeploy-cli)")
    proc = subprocess.run(
        [str(exe), "convert", "llama", "/m", "--tp", "2", "--dst-path", "/out"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "invalid choice: 'convert'" in proc.stderr and "'serve'" in proc.stderr


@pytest.mark.gpu
def test_gpu_round_trip_gives_the_same_greedy_completions(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """On a GPU: shard at TP=2, serve the copy (chosen automatically) and the original, and
    compare greedy completions."""
    import httpx

    done = harness(tmp_path, "shard", str(tiny_model_dir), "--tp", "2", "--profile", "eager")
    assert done.returncode == 0, done.stderr
    copy = Path(done.stdout.strip())
    assert json.loads((copy / "harness-shard.json").read_text())["complete"] is True

    def completions(use_copy: bool) -> list[str]:
        port = free_port()
        shards = tmp_path / "shards" if use_copy else tmp_path / "no-shards"
        env = {"HARNESS_SHARDS_DIR": str(shards)}
        started = run(
            tmp_path / "runs", "serve", "--model", str(tiny_model_dir), "--tp", "2",
            "--profile", "eager", "--port", str(port), "--detach", "--no-watch",
            env=env, timeout=900,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert ("pre-sharded copy" in started.stderr) is use_copy
        run_id = started.stderr.split("harness down ")[-1].split()[0].rstrip(")")
        try:
            texts = []
            for prompt in ("hello", "the quick brown fox", "1 2 3"):
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/v1/completions",
                    json={
                        "model": tiny_model_dir.name,
                        "prompt": prompt,
                        "max_tokens": 16,
                        "temperature": 0,
                    },
                    timeout=120,
                )
                texts.append(reply.json()["choices"][0]["text"])
            return texts
        finally:
            run(tmp_path / "runs", "down", run_id, timeout=120)
            stop_all_under(tmp_path / "runs")

    assert completions(use_copy=True) == completions(use_copy=False)
    shutil.rmtree(copy, ignore_errors=True)
