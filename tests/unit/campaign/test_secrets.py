"""No secret reaches a campaign's files; a plan read back gets its secrets from the
environment or refuses; SLURM tasks cannot get a key given as an engine flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.campaign.base import start_campaign
from harness.campaign.soak import with_secrets_from_environment
from harness.cli.campaignopts import refuse_secret_flags_for_slurm
from harness.errors import BadInput
from harness.redact import MASK
from harness.rundir import RunDir
from harness.spec import LaunchSpec

KEY = "sk-campaign-secret-0123456789"


def test_campaign_json_masks_a_key_given_as_an_engine_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "sys.argv", ["harness", "compare", "--model", "m", "--engine-arg", f"--api-key {KEY}"]
    )
    run = RunDir(tmp_path / "c1")
    start_campaign(run, "compare", {"plan_options": {"engine_args": [f"--api-key {KEY}"]}})
    text = (run.path / "campaign.json").read_text()
    assert KEY not in text
    record = json.loads(text)
    assert record["command"][-1] == f"--api-key {MASK}"
    assert record["options"]["plan_options"]["engine_args"] == [f"--api-key {MASK}"]


def spec(env: dict[str, str]) -> LaunchSpec:
    return LaunchSpec(
        run_id="r",
        run_dir="/tmp/r",
        engine="sim",
        model="sim",
        tp=1,
        profiles=["default"],
        runtime="local",
        host="127.0.0.1",
        port=8000,
        argv=["python", "-m", "harness", "sim"],
        env=env,
        health_url="http://127.0.0.1:8000/health",
        base_url="http://127.0.0.1:8000",
        served_model_name="sim",
    )


def test_a_resumed_plan_takes_its_secrets_from_the_environment_or_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    masked = spec({"VLLM_API_KEY": MASK, "PYTHONUNBUFFERED": "1"})
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    assert with_secrets_from_environment(masked).env == {
        "VLLM_API_KEY": KEY,
        "PYTHONUNBUFFERED": "1",
    }
    monkeypatch.delenv("VLLM_API_KEY")
    with pytest.raises(BadInput, match="VLLM_API_KEY"):
        with_secrets_from_environment(masked)


def test_slurm_refuses_a_key_given_as_an_engine_flag() -> None:
    with pytest.raises(BadInput, match="--api-key"):
        refuse_secret_flags_for_slurm({"engine_args": ("--max-model-len 512", f"--api-key={KEY}")})
    refuse_secret_flags_for_slurm({"engine_args": ("--max-model-len 512",)})
