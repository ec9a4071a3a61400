"""Secrets given as engine flags reach the engine by environment, never by argv."""

from __future__ import annotations

from harness.engines import LaunchRequest, get_adapter
from harness.engines.base import SecretFlag, move_secrets_to_env
from harness.plan import HostFacts, PlanRequest, make_plan

KEY = "sk-flag-secret-0123456789"
HF = "hf_flagsecretABCDEF"


def _request(
    engine: str, *extra: str, profile_args: dict[str, object] | None = None
) -> LaunchRequest:
    return LaunchRequest(
        model="/models/tiny",
        served_model_name="tiny",
        tp=1,
        host="127.0.0.1",
        port=8000,
        python="python3",
        device="cpu",
        cpu_count=2,
        profile_args=profile_args or {},  # type: ignore[arg-type]
        extra_args=extra,
    )


def test_vllm_api_key_and_hf_token_go_to_the_environment() -> None:
    vllm = get_adapter("vllm")
    req = _request("vllm", "--api-key", KEY, f"--hf-token={HF}", "--max-model-len", "512")
    argv = vllm.argv(req)
    assert KEY not in " ".join(argv) and HF not in " ".join(argv)
    assert "--api-key" not in argv and not any(a.startswith("--hf-token") for a in argv)
    assert argv[-2:] == ["--max-model-len", "512"]  # other arguments untouched, in order
    env = vllm.env(req)
    assert env["VLLM_API_KEY"] == KEY and env["HF_TOKEN"] == HF
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # the CPU settings are still there
    assert vllm.warnings(req) == []


def test_vllm_underscore_spelling_and_profile_args() -> None:
    vllm = get_adapter("vllm")
    req = _request("vllm", "--api_key", KEY)
    assert KEY not in vllm.argv(req) and vllm.env(req)["VLLM_API_KEY"] == KEY
    from_profile = _request("vllm", profile_args={"--api-key": KEY, "--enforce-eager": True})
    assert KEY not in vllm.argv(from_profile) and "--enforce-eager" in vllm.argv(from_profile)
    assert vllm.env(from_profile)["VLLM_API_KEY"] == KEY


def test_bare_hf_token_stays_it_is_not_a_secret() -> None:
    vllm = get_adapter("vllm")
    req = _request("vllm", "--hf-token", "--max-model-len", "512")
    assert "--hf-token" in vllm.argv(req) and "HF_TOKEN" not in vllm.env(req)


def test_several_vllm_keys_stay_in_argv_with_a_warning() -> None:
    vllm = get_adapter("vllm")
    req = _request("vllm", "--api-key", "key-one-1234", "key-two-5678")
    assert vllm.argv(req)[-3:] == ["--api-key", "key-one-1234", "key-two-5678"]
    assert "VLLM_API_KEY" not in vllm.env(req)
    (warning,) = vllm.warnings(req)
    assert "VLLM_API_KEY" in warning and "command line" in warning


def test_lmdeploy_has_no_variable_for_api_keys_says_so() -> None:
    lmdeploy = get_adapter("lmdeploy")
    req = _request("lmdeploy", "--api-keys", KEY)
    assert lmdeploy.argv(req)[-2:] == ["--api-keys", KEY]
    (warning,) = lmdeploy.warnings(req)
    assert warning.startswith("LMDeploy has no environment variable for --api-keys")


def test_move_secrets_keeps_order_and_flags_without_values() -> None:
    split = move_secrets_to_env(
        ["--a", "1", "--api-key", "--b", "--api-key=" + KEY, "--c"],
        [SecretFlag("--api-key", "K")],
        "engine",
    )
    assert split.argv == ["--a", "1", "--api-key", "--b", "--c"]
    assert split.env == {"K": KEY} and split.warnings == []


def test_plan_carries_the_secret_in_env_only_and_the_warnings() -> None:
    host = HostFacts(device="cpu", cpu_count=2, python="/venv/bin/python")
    spec = make_plan(
        PlanRequest(
            engine="vllm",
            model="/models/tiny",
            run_id="r1",
            runs_root="/runs",
            engine_args=(f"--api-key {KEY}",),
        ),
        host,
    )
    assert KEY not in spec.argv and spec.env["VLLM_API_KEY"] == KEY
    spec = make_plan(
        PlanRequest(
            engine="lmdeploy",
            model="/models/tiny",
            run_id="r1",
            runs_root="/runs",
            engine_args=(f"--api-keys {KEY}",),
        ),
        HostFacts(device="cuda", cpu_count=8, gpu_count=1),
    )
    assert any("--api-keys" in w for w in spec.warnings)
