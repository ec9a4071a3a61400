from __future__ import annotations

from harness.watchdog.redact import MASK, Redactor, is_secret_name


def test_secret_names() -> None:
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "api_key"):
        assert is_secret_name(name)
    for name in ("PATH", "NCCL_DEBUG", "CUDA_VISIBLE_DEVICES"):
        assert not is_secret_name(name)


def test_values_masked_everywhere_and_by_name() -> None:
    r = Redactor.from_envs({"HF_TOKEN": "hf_abcdef123", "PATH": "/bin", "X_KEY": "1"})
    assert r.text("login with hf_abcdef123 ok") == f"login with {MASK} ok"
    lines = r.env_lines({"HF_TOKEN": "hf_abcdef123", "PATH": "/bin", "X_KEY": "1"})
    assert lines == [f"HF_TOKEN={MASK}", "PATH=/bin", f"X_KEY={MASK}"]
    # Short values are not scrubbed from free text (would mangle logs) but are masked by name.
    assert r.text("step 1") == "step 1"


def test_flag_arguments_masked() -> None:
    r = Redactor()
    assert r.text("vllm serve m --api-key sk-123456 --port 8000") == (
        f"vllm serve m --api-key {MASK} --port 8000"
    )
    assert r.text("--hf-token=abc12345") == f"--hf-token={MASK}"
    assert r.argv(["serve", "--api-key", "sk-123456", "--tp", "2"]) == [
        "serve",
        "--api-key",
        MASK,
        "--tp",
        "2",
    ]


def test_longest_secret_first() -> None:
    r = Redactor.from_envs({"A_TOKEN": "abcd", "B_TOKEN": "abcdefgh"})
    assert r.text("abcdefgh") == MASK
