"""Pre-sharded copies: metadata files read like every user file, and a plan's choice explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import BadInput
from harness.shard import store as S

FINGERPRINT = {"config.json": "abc", "model.safetensors": "12:def"}


def make_copy(root: Path, name: str = "copy", **changes: object) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "model-rank-0-part-0.safetensors").write_bytes(b"x" * 10)
    (path / "model-rank-1-part-0.safetensors").write_bytes(b"y" * 10)
    meta = {
        "complete": True,
        "engine": "vllm",
        "engine_version": "0.32.0",
        "device": "cpu",
        "tp": 2,
        "source": {"path": "/models/tiny", "fingerprint": FINGERPRINT},
        "files": [
            {"name": "model-rank-0-part-0.safetensors", "size": 10, "rank": 0},
            {"name": "model-rank-1-part-0.safetensors", "size": 10, "rank": 1},
        ],
        **changes,
    }
    (path / S.META_FILE).write_text(json.dumps(meta))
    return path


WANTED = S.Wanted("vllm", "0.32.0", "cpu", 2, FINGERPRINT, {})


def test_a_matching_copy_is_chosen(tmp_path: Path) -> None:
    chosen, notes = S.choose([S.inspect(make_copy(tmp_path))], WANTED)
    assert chosen is not None and chosen.path == tmp_path / "copy" and notes == []


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"tp": 4}, "made for TP 4, this plan is TP 2"),
        ({"engine_version": "0.31.0"}, "made with vllm 0.31.0, the server runs 0.32.0"),
        ({"device": "cuda"}, "made on cuda, this plan runs on cpu"),
        (
            {"complete": False, "missing": ["a.weight"]},
            "incomplete (missing tensors: a.weight); harness never serves it",
        ),
        (
            {"source": {"path": "/models/tiny", "fingerprint": {"config.json": "zzz"}}},
            "the source changed",
        ),
        (
            {"weight_args": {"--dtype": "float32"}},
            "made with engine arguments --dtype float32, this plan has (none)",
        ),
    ],
)
def test_every_copy_not_used_is_explained(
    tmp_path: Path, changes: dict[str, object], why: str
) -> None:
    chosen, notes = S.choose([S.inspect(make_copy(tmp_path, **changes))], WANTED)
    assert chosen is None
    (note,) = notes
    assert (
        note.startswith(f"the pre-sharded copy at {tmp_path / 'copy'} is not used: ")
        and why in note
    )


def test_damaged_and_unknown_copies(tmp_path: Path) -> None:
    damaged = make_copy(tmp_path)
    (damaged / "model-rank-1-part-0.safetensors").unlink()
    assert "damaged" in (S.mismatch(S.inspect(damaged), WANTED) or "")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "no harness-shard.json" in (S.mismatch(S.inspect(plain), WANTED) or "")
    unknown = S.Wanted("vllm", None, "cpu", 2, FINGERPRINT, {})
    assert "version where the server runs is unknown" in (
        S.mismatch(S.inspect(make_copy(tmp_path, "c2")), unknown) or ""
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n", "not UTF-8"),
        (b"", "empty file"),
        (b"{nope", "not JSON"),
        (b'{"complete": "yes"}', "not a harness shard metadata file"),
    ],
)
def test_bad_metadata_files_are_one_line_of_bad_input(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / S.META_FILE).write_bytes(content)
    with pytest.raises(BadInput, match=message):
        S.read_meta(tmp_path)


def test_weight_args() -> None:
    assert S.weight_args(
        ["--dtype", "float32", "--max-model-len", "512", "--quantization=fp8"]
    ) == {
        "--dtype": "float32",
        "--quantization": "fp8",
    }


def test_store_layout_and_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(S.SHARDS_DIR_ENV, str(tmp_path / "store"))
    model = tmp_path / "tiny"
    model.mkdir()
    dest = S.default_dest(str(model), "vllm", "0.32.0", "cpu", 2)
    assert dest.parent.parent == tmp_path / "store" and dest.name == "vllm-0.32.0-cpu-tp2"
    elsewhere = make_copy(tmp_path / "elsewhere")
    meta = S.read_meta(elsewhere)
    assert meta is not None
    S.register_link(str(model), elsewhere, meta)
    assert S.copies_of(str(model)) == [elsewhere.resolve()]


def test_fingerprint_changes_with_the_source(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes((8).to_bytes(8, "little") + b'{"a":{}}')
    first = S.source_fingerprint(str(tmp_path))
    (tmp_path / "config.json").write_text('{"x": 1}')
    assert S.source_fingerprint(str(tmp_path)) != first
