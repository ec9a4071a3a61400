"""harness fetch against a local server speaking the hub's file API (HF_ENDPOINT): the files
serving needs, verified; a download killed in the middle of a file resumes with a Range request;
no hub is one line and exit 3 in seconds; plans use the copy (and --fetch makes it)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, have_module, require
from tests.integration.fakehub import Stall, fake_hub
from tests.integration.harnesscli import harness_argv, run, spawn, wait_for

pytestmark = pytest.mark.integration

REPO_ID = "acme/tiny"
MIB = 1024 * 1024


def env_for(tmp_path: Path, endpoint: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "HARNESS_MODELS_DIR": str(tmp_path / "models"),
        "HARNESS_SHARDS_DIR": str(tmp_path / "shards"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **extra,
    }
    env.pop("HF_TOKEN", None)
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    return env


def harness(
    tmp_path: Path, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run(tmp_path / "runs", *args, env=env, timeout=timeout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_downloads_what_serving_needs_verified(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "repo"
    shutil_copy(tiny_model_dir, source)
    (source / "README.md").write_text("# model card\n")
    (source / "pytorch_model.bin").write_bytes(b"old format" * 100)
    with fake_hub(REPO_ID, source) as (endpoint, state):
        proc = harness(tmp_path, "fetch", REPO_ID, env=env_for(tmp_path, endpoint))
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "models" / "hf" / "acme" / "tiny"
    assert proc.stdout.strip() == str(dest)
    files = sorted(p.name for p in dest.iterdir() if p.is_file())
    assert "README.md" not in files and "pytorch_model.bin" not in files
    assert {"config.json", "model.safetensors", "tokenizer.json", "harness-fetch.json"} <= set(
        files
    )
    assert sha256(dest / "model.safetensors") == sha256(tiny_model_dir / "model.safetensors")
    marker = json.loads((dest / "harness-fetch.json").read_text())
    assert (
        marker["model"] == REPO_ID
        and marker["commit"] == "0123456789abcdef0123456789abcdef01234567"
    )
    assert not state.gets("README.md") and not state.gets("pytorch_model.bin")


def shutil_copy(src: Path, dest: Path) -> None:
    import shutil

    shutil.copytree(src, dest)


def test_an_interrupted_download_resumes_with_a_range_request(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Weights larger than two of huggingface_hub's 10 MiB download chunks, cut in the third:
    # what was received before the kill is on disk and must not be asked for again.
    source = tmp_path / "repo"
    shutil_copy(tiny_model_dir, source)
    weights = source / "model.safetensors"
    weights.write_bytes(hashlib.sha256(b"seed").digest() * (25 * MIB // 32))
    cut = 22 * MIB
    with fake_hub(REPO_ID, source) as (endpoint, state):
        state.stall = Stall("model.safetensors", after_bytes=cut)
        env = env_for(tmp_path, endpoint)
        # Output to a file: a pipe nobody reads would fill with progress bars and block fetch.
        with open(tmp_path / "first.log", "wb") as log:
            first = spawn(harness_argv(None, "fetch", REPO_ID), env=env, stdout=log, stderr=log)
        dest = tmp_path / "models" / "hf" / "acme" / "tiny"
        partial = dest / ".harness-partial" / "model.safetensors.part"
        assert state.stall.stalled.wait(60), "the download never reached the cut"
        # The server has sent up to the cut; wait until fetch has written what it got.
        wait_for(
            lambda: partial.is_file() and partial.stat().st_size >= 20 * MIB,
            30,
            "20 MiB on disk",
        )
        os.killpg(first.pid, signal.SIGKILL)  # as if the machine or the user killed it
        first.wait(timeout=30)
        state.stall.release.set()
        kept = partial.stat().st_size
        assert 20 * MIB <= kept <= cut
        assert not (dest / "harness-fetch.json").exists()

        second = harness(tmp_path, "fetch", REPO_ID, env=env)
    assert second.returncode == 0, second.stderr
    ranges = state.gets("model.safetensors")
    assert ranges[0] is None and ranges[-1] == f"bytes={kept}-"
    assert sha256(dest / "model.safetensors") == sha256(weights)
    assert (dest / "harness-fetch.json").is_file() and not partial.exists()


def test_no_hub_is_one_line_and_exit_3(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    proc = harness(
        tmp_path, "fetch", "some-org/some-model", env=env_for(tmp_path, closed), timeout=15
    )
    assert proc.returncode == 3
    error, hint = proc.stderr.strip().splitlines()
    assert error.startswith(f"error: cannot reach the Hugging Face hub at {closed}")
    assert hint.startswith("hint: ") and "HF_ENDPOINT" in hint
    assert not (tmp_path / "models" / "hf" / "some-org").exists()


def test_no_modelscope_hub_is_one_line_and_exit_3(tmp_path: Path) -> None:
    require(have_module("modelscope"), "modelscope (pip install 'harness[modelscope]')")
    env = env_for(tmp_path, MODELSCOPE_DOMAIN=f"127.0.0.1:{free_port()}")
    proc = harness(
        tmp_path, "fetch", "some-org/some-model", "--source", "modelscope", env=env, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: cannot reach the ModelScope hub")
    assert len(proc.stderr.strip().splitlines()) == 2


def test_unknown_model_and_bad_destinations(tiny_model_dir: Path, tmp_path: Path) -> None:
    with fake_hub(REPO_ID, tiny_model_dir) as (endpoint, _state):
        env = env_for(tmp_path, endpoint)
        unknown = harness(tmp_path, "fetch", "acme/absent", env=env)
        afile = tmp_path / "afile"
        afile.write_text("x")
        unwritable = harness(tmp_path, "fetch", REPO_ID, "--dest", str(afile / "m"), env=env)
    assert unknown.returncode == 2 and "acme/absent (revision main) is not on" in unknown.stderr
    assert unwritable.returncode == 2 and "is not a writable directory" in unwritable.stderr
    for proc in (unknown, unwritable):
        assert "Traceback" not in proc.stderr


def test_plans_use_the_copy_and_fetch_makes_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    with fake_hub(REPO_ID, tiny_model_dir) as (endpoint, _state):
        env = env_for(tmp_path, endpoint)
        refused = harness(
            tmp_path, "serve", "--model", REPO_ID, "--port", str(free_port()), env=env
        )
        planned = harness(tmp_path, "plan", "--model", REPO_ID, "--fetch", env=env)
    assert refused.returncode == 2
    assert f"error: {REPO_ID} has no completed local copy" in refused.stderr
    assert f"hint: harness fetch {REPO_ID} first, or add --fetch" in refused.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert planned.returncode == 0, planned.stderr
    spec = json.loads(planned.stdout)
    dest = tmp_path / "models" / "hf" / "acme" / "tiny"
    assert spec["model"] == str(dest) and spec["served_model_name"] == REPO_ID
    assert spec["argv"][spec["argv"].index("--model") + 1] == str(dest)
