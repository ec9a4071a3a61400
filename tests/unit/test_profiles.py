from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ProfileError
from harness.profiles import available_profiles, compose, load_profile, parse_profile

VARS = {
    "run_dir": "/runs/r1",
    "iface": "eth0",
    "host_ip": "10.0.0.2",
    "model": "m",
    "tp": "2",
    "port": "8000",
}


def test_shipped_profiles_all_parse() -> None:
    names = available_profiles()
    assert {"default", "debug", "trace", "vlm-safe", "nccl-safe", "net", "eager"} <= set(names)
    for name in names:
        load_profile(name)


def test_debug_profile_for_vllm_and_lmdeploy() -> None:
    vllm = compose(["default", "debug"], "vllm", VARS)
    assert vllm.env["CUDA_LAUNCH_BLOCKING"] == "1"
    assert vllm.env["NCCL_DEBUG"] == "TRACE"
    assert vllm.env["NCCL_DEBUG_FILE"] == "/runs/r1/nccl.%h.%p.log"
    assert vllm.env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert vllm.args["--enforce-eager"] is True
    assert "SYS_PTRACE" in vllm.container.cap_add
    assert vllm.container.ulimits == {"stack": 67108864, "core": -1}
    assert vllm.container.ipc_mode == "host"
    lmd = compose(["default", "debug"], "lmdeploy", VARS)
    assert lmd.env["TM_DEBUG_LEVEL"] == "DEBUG"
    assert "VLLM_LOGGING_LEVEL" not in lmd.env
    assert lmd.args == {"--log-level": "DEBUG", "--eager-mode": True}


def test_composition_left_to_right_and_removal(tmp_path: Path) -> None:
    override = tmp_path / "mine.yaml"
    override.write_text(
        "env:\n  NCCL_DEBUG: INFO\nvllm:\n  args:\n    --enforce-eager: false\n    --max-model-len: 512\n"
        "container:\n  cap_add: [NET_ADMIN]\n  shm_size: 1g\n"
    )
    out = compose(["default", "debug", str(override)], "vllm", VARS)
    assert out.env["NCCL_DEBUG"] == "INFO"
    assert "--enforce-eager" not in out.args
    assert out.args["--max-model-len"] == 512
    assert out.container.cap_add == ["SYS_PTRACE", "NET_ADMIN"]
    assert out.container.shm_size == "1g"
    assert out.names == ["default", "debug", str(override)]


def test_trace_profile_warns() -> None:
    out = compose(["trace"], "vllm", VARS)
    assert out.env["VLLM_TRACE_FUNCTION"] == "1"
    assert any("very slow" in w for w in out.warnings)


def test_vlm_safe_sets_engine_and_load_limits() -> None:
    out = compose(["vlm-safe"], "vllm", VARS)
    assert "--limit-mm-per-prompt" in out.args and "--mm-processor-kwargs" in out.args
    assert out.load.max_image_pixels == 1003520
    assert compose(["vlm-safe"], "lmdeploy", VARS).args == {"--vision-max-batch-size": 1}


def test_net_profile_needs_an_interface() -> None:
    out = compose(["net"], "vllm", VARS)
    assert out.env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert out.env["VLLM_HOST_IP"] == "10.0.0.2"
    with pytest.raises(ProfileError, match="--net-iface"):
        compose(["net"], "vllm", {**VARS, "iface": None})


def test_unknown_profile_lists_valid_choices() -> None:
    with pytest.raises(ProfileError) as info:
        compose(["bogus"], "vllm", VARS)
    message = str(info.value)
    assert "unknown profile 'bogus'" in message
    assert "debug" in message and "vlm-safe" in message


def test_unknown_key_names_file_line_and_choices() -> None:
    text = "description: x\ncontainer:\n  ipc_mode: host\n  shm: 1g\n"
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "mine.yaml")
    message = str(info.value)
    assert message.startswith("mine.yaml:4: unknown key 'shm' in container")
    assert "shm_size" in message and "cap_add" in message


def test_unknown_top_level_key() -> None:
    with pytest.raises(ProfileError, match=r"^p.yaml:2: unknown key 'envs' \(valid: .*env"):
        parse_profile("description: x\nenvs: {}\n", "p.yaml")


def test_wrong_type_names_line() -> None:
    with pytest.raises(ProfileError, match=r"^p.yaml:3: container.ulimits.stack"):
        parse_profile("container:\n  ulimits:\n    stack: big\n", "p.yaml")


def test_malformed_yaml_names_line() -> None:
    with pytest.raises(ProfileError, match=r"^p.yaml:3: malformed YAML"):
        parse_profile("env:\n  A: 1\n B: 2\n", "p.yaml")


def test_engine_arg_must_be_a_flag() -> None:
    with pytest.raises(ProfileError, match="must start with '--'"):
        parse_profile("vllm:\n  args:\n    enforce-eager: true\n", "p.yaml")


def test_missing_profile_file() -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        compose(["./nope.yaml"], "vllm", VARS)


# ----------------------------------------------------------------------------- duplicate keys


def test_duplicate_key_is_refused_with_its_line_and_the_first_one() -> None:
    text = "env:\n  NCCL_DEBUG: INFO\n  NCCL_DEBUG: TRACE\n"
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "p.yaml")
    message = str(info.value)
    assert message.startswith("p.yaml:3: duplicate key 'NCCL_DEBUG' in env (first on line 2)")


def test_duplicate_top_level_section_is_refused() -> None:
    text = "vllm:\n  args: {--enforce-eager: true}\ncontainer: {}\nvllm:\n  env: {A: 1}\n"
    with pytest.raises(ProfileError, match=r"^p.yaml:4: duplicate key 'vllm' \(first on line 1\)"):
        parse_profile(text, "p.yaml")


def test_duplicate_flag_in_a_flow_mapping_is_refused() -> None:
    with pytest.raises(ProfileError, match=r"^p.yaml:2: duplicate key '--x' in vllm.args"):
        parse_profile("vllm:\n  args: {--x: 1, --x: 2}\n", "p.yaml")


def test_merge_key_overrides_are_not_duplicates() -> None:
    # `<<: *anchor` then a key of the merged mapping is YAML's way to override: allowed.
    text = "vllm: &v\n  env: {A: 1}\n  args: {--x: 1}\nlmdeploy:\n  <<: *v\n  env: {A: 2}\n"
    profile = parse_profile(text, "p.yaml")
    assert profile.lmdeploy.env == {"A": 2}
    assert profile.lmdeploy.args == {"--x": 1}


# ----------------------------------------------------------------------------- unreadable files


def test_binary_profile_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "logo.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert str(info.value) == (
        f"{path}: not UTF-8 text (byte 0x89 at line 1, column 1, byte offset 0); "
        "a profile is a YAML text file"
    )


def test_latin1_profile_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes("description: ok\nwarning: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ProfileError, match=r"line 2, column 13, byte offset 28"):
        load_profile(str(path))


def test_nul_bytes_are_binary(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"env:\n  A: 1\x00\n")
    with pytest.raises(ProfileError, match=r": binary data \(a NUL byte at line 2, column 7"):
        load_profile(str(path))


def test_empty_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"")
    with pytest.raises(ProfileError, match=rf"^{path}: empty file"):
        load_profile(str(path))


def test_directory_given_as_profile(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.mkdir()
    with pytest.raises(ProfileError, match=rf"^{path}: is a directory, not a profile file"):
        load_profile(str(path))


def test_huge_profile_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    with path.open("wb") as fh:
        fh.truncate(3 * 1024**3)  # sparse: takes no disk space
    with pytest.raises(ProfileError, match=rf"^{path}: 3.0 GiB is over the 1 MiB limit"):
        load_profile(str(path))


@pytest.mark.parametrize("value", [".inf", ".nan", "1e300"])
def test_a_deadline_must_be_a_real_deadline(value: str) -> None:
    # .inf is no deadline; 1e300 s overflows the waits that use it.
    with pytest.raises(ProfileError, match=r"^p.yaml:2: deadlines.startup_s: "):
        parse_profile(f"deadlines:\n  startup_s: {value}\n", "p.yaml")
    with pytest.raises(ProfileError, match=r"^p.yaml:1: watch.stall_after_s: "):
        parse_profile(f"watch: {{stall_after_s: {value}}}\n", "p.yaml")
