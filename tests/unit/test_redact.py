"""The redaction rules every writer under runs/ applies (harness/redact.py)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.plan import HostFacts, PlanRequest, make_plan
from harness.redact import (
    MASK,
    Redactor,
    redact_launch_spec,
    restore_masked_env,
    secret_arguments,
)
from harness.rundir import RunDir

KEY = "sk-flag-secret-0123456789"


def test_secret_arguments_of_every_form() -> None:
    argv = ["x", "--api-key", "a1234", "b1234", "--hf-token", "--model", "m", "--hf-token=c1234"]
    assert secret_arguments(argv) == ["a1234", "b1234", "c1234"]
    assert secret_arguments(["--api-keys", "k1", "k2"]) == ["k1", "k2"]
    assert secret_arguments(["--watermark-config", '{"key": 42}']) == ['{"key": 42}']


def test_argv_masks_every_value_of_a_flag() -> None:
    r = Redactor()
    assert r.argv(["lmdeploy", "--api-keys", "k1234", "k5678", "--tp", "2"]) == [
        "lmdeploy",
        "--api-keys",
        MASK,
        MASK,
        "--tp",
        "2",
    ]
    assert r.argv(["--api_key=abc"]) == [f"--api_key={MASK}"]
    # A bare --hf-token ("use the stored login") is followed by an option, which stays.
    assert r.argv(["--hf-token", "--model", "m"]) == ["--hf-token", "--model", "m"]


def test_text_masks_flags_but_not_lookalikes() -> None:
    r = Redactor()
    assert r.text("--api_key sk-1 --API-KEY=zz") == f"--api_key {MASK} --API-KEY={MASK}"
    for text in ("--max-tokens 16", "--tokenizer gpt2", "--hf-token --model m"):
        assert r.text(text) == text


def test_launch_spec_redacted_everywhere() -> None:
    spec = {
        "argv": ["lmdeploy", "serve", "--api-keys", KEY],
        "env": {"VLLM_API_KEY": "sk-env-secret-98765", "PATH": "/bin", "EMPTY_TOKEN": ""},
        "warnings": [f"started with {KEY} and sk-env-secret-98765"],
        "tp": 2,
    }
    out = redact_launch_spec(spec)
    text = json.dumps(out)
    assert KEY not in text and "sk-env-secret-98765" not in text
    assert out["env"] == {"VLLM_API_KEY": MASK, "PATH": "/bin", "EMPTY_TOKEN": ""}
    assert out["argv"] == ["lmdeploy", "serve", "--api-keys", MASK] and out["tp"] == 2


def test_write_launch_spec_holds_no_secret(tmp_path: Path) -> None:
    spec = make_plan(
        PlanRequest(
            engine="vllm",
            model="/models/tiny",
            run_id="r1",
            runs_root=str(tmp_path),
            engine_args=(f"--api-key {KEY}", "--hf-token hf_abcdefgh123"),
        ),
        HostFacts(device="cpu", cpu_count=2, python="/venv/bin/python"),
    )
    run = RunDir(tmp_path / "r1").create()
    path = run.write_launch_spec(spec)
    data = path.read_text()
    assert KEY not in data and "hf_abcdefgh123" not in data
    written = json.loads(data)
    assert written["env"]["VLLM_API_KEY"] == MASK and written["env"]["HF_TOKEN"] == MASK
    assert written["argv"] == spec.argv  # nothing else changed
    run.write_state(argv=["lmdeploy", "--api-keys", KEY], pid=1)
    assert KEY not in run.state.read_text() and run.read_state()["pid"] == 1


def test_restore_masked_env_from_the_environment() -> None:
    env = {"VLLM_API_KEY": MASK, "HF_TOKEN": MASK, "PATH": "/bin"}
    restored = restore_masked_env(env, {"VLLM_API_KEY": KEY})
    assert restored == {"VLLM_API_KEY": KEY, "PATH": "/bin"}  # a mask is never passed on
