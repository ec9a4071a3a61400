from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from harness.errors import WorkloadError
from harness.load.workload import (
    MAX_LENGTH,
    Fixed,
    LogNormal,
    Uniform,
    available_workloads,
    load_workload,
    parse_workload,
    read_prompt_file,
    resolve_workload,
)


def test_shipped_workloads_parse() -> None:
    names = available_workloads()
    for required in ("chat-short", "long-context", "vlm-mixed"):
        assert required in names
    for name in names:
        _, path = load_workload(name)
        assert path.suffix == ".yaml"
    vlm, _ = load_workload("vlm-mixed")
    assert vlm.images is not None
    assert max(s.width * s.height for s in vlm.images.sizes) >= 4096 * 4096


def test_bare_integer_is_fixed_length() -> None:
    wl = parse_workload("max_tokens: 7\nprompt: {tokens: 9}\n")
    assert wl.max_tokens == Fixed(value=7)
    assert wl.prompt.tokens == Fixed(value=9)


def test_unknown_key_names_file_line_and_valid_keys() -> None:
    text = "api: chat\nprompt:\n  source: synthetic\n  tokenz: 5\n"
    with pytest.raises(WorkloadError) as exc:
        parse_workload(text, "w.yaml")
    msg = exc.value.message
    assert msg.startswith("w.yaml:4: prompt.tokenz: unknown key 'tokenz'")
    assert "valid keys:" in msg and "tokens" in msg and "source" in msg
    assert exc.value.exit_code == 2


def test_bad_choice_lists_valid_ones() -> None:
    with pytest.raises(WorkloadError) as exc:
        parse_workload("stream: true\napi: grpc\n", "w.yaml")
    assert exc.value.message.startswith("w.yaml:2: api:")
    assert "'chat'" in exc.value.message and "'completions'" in exc.value.message


def test_bad_distribution() -> None:
    with pytest.raises(WorkloadError, match=r"w.yaml:2: .*dist must be one of: fixed, uniform"):
        parse_workload("max_tokens:\n  dist: zipf\n  value: 3\n", "w.yaml")
    with pytest.raises(WorkloadError, match=r"max .* is below min"):
        parse_workload("max_tokens: {dist: uniform, min: 5, max: 2}\n", "w.yaml")
    with pytest.raises(WorkloadError, match=r"unknown key 'mean'.*valid keys: dist, min, max"):
        parse_workload("max_tokens: {dist: uniform, min: 1, max: 2, mean: 3}\n", "w.yaml")


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(WorkloadError, match=r"w.yaml:2: malformed YAML"):
        parse_workload("api: chat\n  bad: [\n", "w.yaml")


def test_images_need_chat() -> None:
    text = "api: completions\nimages:\n  sizes: [{width: 2, height: 2}]\n"
    with pytest.raises(WorkloadError, match="images need api: chat"):
        parse_workload(text, "w.yaml")


def test_unknown_name_lists_workloads() -> None:
    with pytest.raises(WorkloadError) as exc:
        resolve_workload("nope")
    assert "chat-short" in exc.value.message


def test_length_distributions_sample_in_bounds() -> None:
    rng = random.Random(0)
    u = Uniform(dist="uniform", min=3, max=5)
    assert {u.sample(rng) for _ in range(200)} == {3, 4, 5}
    ln = LogNormal(dist="lognormal", median=50, sigma=1.0, min=10, max=80)
    samples = [ln.sample(rng) for _ in range(500)]
    assert min(samples) >= 10 and max(samples) <= 80


def test_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a b"}\n\n{"prompt": "c"}\n')
    wl = parse_workload("prompt: {source: jsonl, path: p.jsonl}\n")
    assert read_prompt_file(wl.prompt, tmp_path) == ["a b", "c"]
    (tmp_path / "s.json").write_text(
        '[{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},'
        ' {"conversations": []}]'
    )
    wl = parse_workload("prompt: {source: sharegpt, path: s.json}\n")
    assert read_prompt_file(wl.prompt, tmp_path) == ["hi"]
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    wl = parse_workload("prompt: {source: jsonl, path: bad.jsonl}\n")
    with pytest.raises(WorkloadError, match=r"bad.jsonl:1: no string field 'prompt'"):
        read_prompt_file(wl.prompt, tmp_path)
    with pytest.raises(WorkloadError, match=r"needs prompt\.path"):
        parse_workload("prompt: {source: jsonl}\n")


def test_duplicate_key_is_refused_with_its_line() -> None:
    text = "api: chat\nmax_tokens: 16\nstream: true\nmax_tokens: 64\n"
    with pytest.raises(
        WorkloadError, match=r"^w.yaml:4: duplicate key 'max_tokens' \(first on line 2\)"
    ):
        parse_workload(text, "w.yaml")
    nested = "prompt:\n  tokens: 8\n  source: synthetic\n  tokens: 9\n"
    with pytest.raises(WorkloadError, match=r"^w.yaml:4: duplicate key 'tokens' in prompt"):
        parse_workload(nested, "w.yaml")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfeapi: chat\n", "not UTF-8 text (byte 0xff at line 1, column 1, byte offset 0)"),
        (b"", "empty file"),
        (b"api: chat\n\x00", "binary data (a NUL byte at line 2, column 1, byte offset 10)"),
    ],
)
def test_unreadable_workload_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(content)
    with pytest.raises(WorkloadError) as exc:
        load_workload(str(path))
    assert exc.value.message.startswith(f"{path}: {problem}")


def test_directory_given_as_workload(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.mkdir()
    with pytest.raises(WorkloadError, match=rf"^{path}: is a directory, not a workload file"):
        load_workload(str(path))


@pytest.mark.parametrize("source", ["jsonl", "sharegpt"])
def test_binary_or_empty_prompt_files(tmp_path: Path, source: str) -> None:
    wl = parse_workload(f"prompt: {{source: {source}, path: p.data}}\n")
    path = tmp_path / "p.data"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(WorkloadError, match=rf"^{path}: not UTF-8 text \(byte 0xe9 at line 1"):
        read_prompt_file(wl.prompt, tmp_path)
    path.write_bytes(b"")
    with pytest.raises(WorkloadError, match=rf"^{path}: empty file"):
        read_prompt_file(wl.prompt, tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(WorkloadError, match=rf"^{path}: is a directory, not a prompt file"):
        read_prompt_file(wl.prompt, tmp_path)


@pytest.mark.parametrize(
    "length",
    [
        "{dist: fixed, value: 1000000000}",
        "{dist: normal, mean: .inf, std: 1}",
        "{dist: normal, mean: 10, std: .nan}",
        "{dist: lognormal, median: 64, sigma: 1000}",
        "{dist: normal, mean: 10, std: 1, min: 9, max: 3}",
    ],
)
def test_lengths_that_would_fail_only_once_the_run_started(length: str) -> None:
    with pytest.raises(WorkloadError, match=r"^w.yaml:1: max_tokens"):
        parse_workload(f"max_tokens: {length}\n", "w.yaml")


def test_lengths_stay_bounded_and_samples_within_them() -> None:
    rng = random.Random(0)
    wide = LogNormal(dist="lognormal", median=1000, sigma=50)  # exp(6 * 50) would overflow
    assert wide.upper == MAX_LENGTH
    assert all(0 <= wide.sample(rng) <= MAX_LENGTH for _ in range(200))
    floor = parse_workload("max_tokens: {dist: normal, mean: 0, std: 0, min: 100}\n").max_tokens
    assert floor.sample(rng) == 100 and floor.upper == 100


def test_lognormal_samples_are_unchanged_by_the_overflow_guard() -> None:
    # Same draws as rng.lognormvariate: seeded runs stay comparable with earlier ones.
    ln = LogNormal(dist="lognormal", median=50, sigma=1.0)
    a, b = random.Random(7), random.Random(7)
    assert [ln.sample(a) for _ in range(50)] == [
        max(0, round(b.lognormvariate(math.log(50), 1.0))) for _ in range(50)
    ]
