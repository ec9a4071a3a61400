"""The one reader of user files, and the strict YAML parser every loader shares."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from harness.errors import BadInput, ProfileError
from harness.userfiles import (
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    MIB,
    decode_user_text,
    human_size,
    key_path,
    parse_yaml,
    read_user_text,
)


def read(path: Path | str, max_bytes: int = MIB) -> str:
    return read_user_text(path, what="profile", kind="YAML", max_bytes=max_bytes)


def test_reads_utf8_text_and_drops_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xef\xbb\xbfdescription: caf\xc3\xa9\n")
    assert read(path) == "description: caf\u00e9\n"


def test_error_class_is_the_callers(tmp_path: Path) -> None:
    with pytest.raises(ProfileError):
        read_user_text(tmp_path, what="profile", kind="YAML", max_bytes=10, error=ProfileError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=rf"^{tmp_path}/nope: no such file$"):
        read(tmp_path / "nope")


def test_device_is_refused_without_reading_forever() -> None:
    with pytest.raises(BadInput, match=r"^/dev/zero: is a device or socket, not a profile file$"):
        read("/dev/zero")


def test_size_is_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" * 300)
    with pytest.raises(BadInput, match=r"^.*big.yaml: 1,500 bytes is over the 1 KiB limit for a"):
        read(path, max_bytes=1024)
    assert read(path, max_bytes=1500).startswith("a: 1")
    with pytest.raises(BadInput, match=r"^.*big.yaml: 1.5 KiB is over the 512 bytes limit"):
        read(path, max_bytes=512)


def test_a_pipe_is_read_up_to_the_limit_only(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb", buffering=0) as fh, contextlib.suppress(BrokenPipeError):
            fh.write(b"x" * 4096)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(BadInput, match=r"fifo: more than the 1 KiB limit for a profile$"):
            read(fifo, max_bytes=1024)
    finally:
        thread.join(timeout=30)


def test_permission_denied_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("a: 1\n")
    if os.geteuid() == 0:
        # root reads a chmod 000 file; the real case runs as another user in
        # tests/integration/test_cli_bad_input.py. Here: the errno open() gives a non-root user.
        real_open = open

        def deny(file: object, *args: object, **kwargs: object) -> object:
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr("builtins.open", deny)
    else:
        path.chmod(0)
    with pytest.raises(BadInput, match=rf"^{path}: permission denied"):
        read(path)


def test_decode_names_line_column_and_offset() -> None:
    data = b"a: 1\nb: \xe9t\xc3\n"
    with pytest.raises(BadInput) as info:
        decode_user_text(data, "f.yaml", what="profile", kind="YAML")
    assert str(info.value) == (
        "f.yaml: not UTF-8 text (byte 0xe9 at line 2, column 4, byte offset 8); "
        "a profile is a YAML text file"
    )


def test_human_size() -> None:
    assert human_size(10) == "10 bytes"
    assert human_size(1024) == "1 KiB"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(MIB) == "1 MiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"


# ----------------------------------------------------------------------------- YAML


def test_parse_yaml_returns_data_and_nodes() -> None:
    data, node = parse_yaml("a:\n  b: [1, 2]\n", "f.yaml")
    assert data == {"a": {"b": [1, 2]}}
    assert node is not None and node.start_mark.line == 0
    assert parse_yaml("# only a comment\n", "f.yaml") == (None, None)


def test_duplicate_keys_compare_as_yaml_resolves_them() -> None:
    with pytest.raises(BadInput, match=r"^f.yaml:2: duplicate key 1 \(first on line 1\)"):
        parse_yaml("1: a\n0x1: b\n", "f.yaml")


def test_the_first_duplicate_in_the_file_is_reported() -> None:
    text = "a:\n  x: 1\n  x: 2\nb:\n  y: 1\n  y: 2\n"
    with pytest.raises(BadInput, match=r"^f.yaml:3: duplicate key 'x' in a "):
        parse_yaml(text, "f.yaml")


def test_duplicate_inside_a_list_names_its_path() -> None:
    with pytest.raises(BadInput, match=r"^f.yaml:3: duplicate key 'w' in sizes.0 "):
        parse_yaml("sizes:\n  - w: 1\n    w: 2\n", "f.yaml")


def test_merge_of_a_mapping_that_merges_is_not_a_duplicate() -> None:
    text = "a: &a {x: 1}\nouter:\n  b: &b {<<: *a, x: 2}\nc: {<<: *b, y: 3}\n"
    data, _ = parse_yaml(text, "f.yaml")
    assert data["outer"]["b"] == {"x": 2}
    assert data["c"]["y"] == 3


def test_nesting_is_limited() -> None:
    deep = "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1)
    with pytest.raises(BadInput, match=r"^f.yaml:1: malformed YAML: nested more than 64"):
        parse_yaml(deep, "f.yaml")
    very_deep = "[" * 100_000
    with pytest.raises(BadInput, match="malformed YAML"):
        parse_yaml(very_deep, "f.yaml")


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(BadInput, match=r"^f.yaml:1: malformed YAML: an alias makes this value"):
        parse_yaml("a: &a [*a]\n", "f.yaml")


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    with pytest.raises(BadInput, match=rf"expand this to more than {MAX_YAML_VALUES:,} values"):
        parse_yaml("\n".join(lines) + "\n", "f.yaml")
    chain = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200)]
    with pytest.raises(BadInput, match=r"aliases nest this more than 64 levels deep"):
        parse_yaml("\n".join(chain) + "\n", "f.yaml")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: !!int abc\n", 2),
        ("a: !!float x\n", 1),
        ("a: !!timestamp x\n", 1),
        ("a:\n  b: 2020-13-45\n", 2),
        ("a: !!python/object:os.system x\n", 1),
        ("? [a]\n: 1\n", 1),
    ],
)
def test_values_an_explicit_tag_cannot_build_have_a_line(text: str, line: int) -> None:
    with pytest.raises(BadInput, match=rf"^f.yaml:{line}: malformed YAML: "):
        parse_yaml(text, "f.yaml")


def test_control_characters_are_refused_with_their_line() -> None:
    # Found by tests/unit/test_loaders_fuzz.py: PyYAML refuses them before parsing starts.
    with pytest.raises(BadInput, match=r"^f.yaml:2: malformed YAML: character U\+0001 is not"):
        parse_yaml("a: 1\nb: \x01\n", "f.yaml")


def test_key_paths_quote_keys_that_are_not_plain_words() -> None:
    assert key_path(("vllm", "args", "--max-model-len", 0)) == "vllm.args.--max-model-len.0"
    # Found by the fuzz test: a key holding a newline split an error message over two lines.
    assert key_path(("env", "A\nB", "a.b")) == "env.'A\\nB'.'a.b'"
