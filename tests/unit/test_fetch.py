"""harness fetch without a network: which files, verification, destinations, the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness import fetch as F
from harness.errors import BadInput

LISTING = [
    ".gitattributes",
    "README.md",
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "modeling_custom.py",
    "consolidated.safetensors",
    "original/consolidated.00.pth",
    "onnx/model.onnx",
    "flax_model.msgpack",
    "merges.txt",
    "vocab.json",
]


def test_only_serving_files_and_one_weight_format() -> None:
    assert F.serving_files(LISTING) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "modeling_custom.py",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "vocab.json",
    ]


def test_bin_only_repositories_get_bin_and_its_index() -> None:
    chosen = F.serving_files(["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json"])
    assert chosen == ["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]


def test_verify_sizes_and_hashes_and_remove_bad_files(tmp_path: Path) -> None:
    good, lfs, small = tmp_path / "config.json", tmp_path / "w.safetensors", tmp_path / "t.json"
    good.write_text("{}")
    lfs.write_bytes(b"weights")
    small.write_text("tok")
    files = [
        F.RemoteFile("config.json", 2, blob_id=F.git_blob_sha1(good)),
        F.RemoteFile("w.safetensors", 7, sha256=hashlib.sha256(b"WEIGHTS").hexdigest()),
        F.RemoteFile("t.json", 99),
        F.RemoteFile("missing.json", 1),
    ]
    bad = F.verify_files(tmp_path, files)
    assert bad == [
        "w.safetensors: SHA-256 differs from the hub's",
        "t.json has 3 bytes, the hub lists 99",
        "missing.json is missing",
    ]
    assert good.exists() and not lfs.exists() and not small.exists()


def test_git_blob_id_is_gits() -> None:
    # `printf 'hello\n' | git hash-object --stdin`
    path = Path(__file__).with_name("_blob_probe.txt")
    try:
        path.write_bytes(b"hello\n")
        assert F.git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"
    finally:
        path.unlink()


def test_repo_ids() -> None:
    F.check_repo_id("Qwen/Qwen2.5-0.5B-Instruct")
    F.check_repo_id("gpt2")
    for bad in ("a/b/c", "../x", "org/", "bad id", ""):
        with pytest.raises(BadInput):
            F.check_repo_id(bad)


def test_store_and_completed_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(F.MODELS_DIR_ENV, str(tmp_path))
    dest = F.default_dest("org/m", None, "hf")
    assert dest == tmp_path / "hf" / "org" / "m"
    assert F.default_dest("org/m", "v2", "modelscope") == tmp_path / "modelscope" / "org" / "m@v2"
    assert F.local_copy("org/m") is None
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{}")
    assert F.local_copy("org/m") is None  # files without the marker: an unfinished fetch
    F.write_marker(dest, {"model": "org/m"})
    assert F.local_copy("org/m") == dest


def test_destinations_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        import os

        if os.geteuid() != 0:
            with pytest.raises(BadInput, match="not a writable directory"):
                F.check_destination(locked / "m", force=False)
    finally:
        locked.chmod(0o700)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(BadInput, match="not a writable directory"):
        F.check_destination(afile / "m", force=False)


def test_network_destination_refused_unless_forced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(F.fsinfo, "is_network_path", lambda path: (True, "nfs4", "/data"))
    with pytest.raises(BadInput, match=r"network filesystem \(nfs4 at /data\)"):
        F.check_destination(tmp_path / "m", force=False)
    F.check_destination(tmp_path / "m", force=True)


def test_local_directory_is_already_fetched(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert F.fetch(str(tmp_path)).already
    with pytest.raises(BadInput, match=r"without config\.json"):
        F.fetch(str(tmp_path.parent))
    with pytest.raises(BadInput, match="does not exist"):
        F.fetch(str(tmp_path / "absent"))


def test_local_directory_copied_to_dest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"w" * 100)
    (src / "README.md").write_text("docs")
    result = F.fetch(str(src), dest=tmp_path / "dest", echo=lambda _line: None)
    assert sorted(p.name for p in result.path.iterdir()) == [
        "config.json",
        "harness-fetch.json",
        "model.safetensors",
    ]


def test_a_full_disk_is_an_environment_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harness.errors import EnvironmentProblem

    monkeypatch.setattr(F.fsinfo, "free_bytes", lambda path: 1024)
    with pytest.raises(EnvironmentProblem, match=r"has 1 KiB free, the files need 2 KiB more"):
        F.check_space(tmp_path, 2048)
    F.check_space(tmp_path, 512)
