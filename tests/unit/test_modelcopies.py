"""The plan path chooses the model's copy: a hub id's local copy, a matching pre-sharded copy
(``--load-format sharded_state``), every other copy explained, an incomplete one never used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import engineinfo
from harness.cli.planopts import build_spec
from harness.errors import PlanError
from harness.fetch import MODELS_DIR_ENV, write_marker
from harness.shard import store

CONFIG = {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}


def options(model: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": model,
        "tp": 2,
        "profiles": (),
        "runtime": "local",
        "host": "127.0.0.1",
        "port": 8000,
        "image": None,
        "engine_args": (),
        "faults": (),
        "device": "cpu",
        "gpus": None,
        "net_iface": None,
        "host_ip": None,
        "fetch": False,
    }
    return {**base, **changes}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(store.SHARDS_DIR_ENV, str(tmp_path / "shards"))
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setattr(engineinfo, "engine_version", lambda *a, **k: "0.32.0")
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    (model / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    return model


def make_copy(model: Path, *, complete: bool = True, tp: int = 2, name: str | None = None) -> Path:
    dest = store.default_dest(str(model), "vllm", "0.32.0", "cpu", tp)
    if name:
        dest = dest.with_name(name)
    dest.mkdir(parents=True)
    for rank in range(tp):
        (dest / f"model-rank-{rank}-part-0.safetensors").write_bytes(b"x")
    (dest / "config.json").write_text(json.dumps(CONFIG))
    meta = store.ShardMeta(
        complete=complete,
        engine="vllm",
        engine_version="0.32.0",
        device="cpu",
        tp=tp,
        source=store.ShardSource(path=str(model), fingerprint=store.source_fingerprint(str(model))),
        files=[
            store.ShardFile(name=f"model-rank-{r}-part-0.safetensors", size=1, rank=r)
            for r in range(tp)
        ],
        missing=[] if complete else ["model.layers.0.self_attn.qkv_proj.weight"],
    )
    store.write_meta(dest, meta)
    return dest


def test_a_matching_sharded_copy_is_served_with_sharded_state(env: Path, tmp_path: Path) -> None:
    copy = make_copy(env)
    spec = build_spec(options(str(env)), runs_dir=str(tmp_path / "runs"))
    assert spec.sharded_copy == str(copy) and spec.model == str(env)
    i = spec.argv.index("--model")
    assert spec.argv[i + 1] == str(copy)
    assert spec.argv[-2:] == ["--load-format", "sharded_state"]
    assert spec.served_model_name == "tiny"
    assert any("serving the pre-sharded copy" in w for w in spec.warnings)


def test_docker_mounts_the_copy(env: Path, tmp_path: Path) -> None:
    copy = make_copy(env)
    spec = build_spec(options(str(env), runtime="docker"), runs_dir=str(tmp_path / "runs"))
    assert spec.container is not None and spec.container.volumes[str(copy)].mode == "ro"


def test_an_incomplete_copy_is_never_used_and_explained(env: Path, tmp_path: Path) -> None:
    copy = make_copy(env, complete=False)
    spec = build_spec(options(str(env)), runs_dir=str(tmp_path / "runs"))
    assert spec.sharded_copy is None and "--load-format" not in spec.argv
    assert any(f"{copy} is not used: incomplete" in w for w in spec.warnings)
    with pytest.raises(PlanError, match=r"incomplete .*harness never serves it"):
        build_spec(options(str(copy)), runs_dir=str(tmp_path / "runs"))


def test_other_tp_and_own_load_format_are_explained(env: Path, tmp_path: Path) -> None:
    make_copy(env, tp=4, name="tp4")
    spec = build_spec(options(str(env)), runs_dir=str(tmp_path / "runs"))
    assert spec.sharded_copy is None
    assert any("made for TP 4, this plan is TP 2" in w for w in spec.warnings)
    make_copy(env)
    own = build_spec(
        options(str(env), engine_args=("--load-format auto",)), runs_dir=str(tmp_path / "runs")
    )
    assert own.sharded_copy is None
    assert any("the plan sets --load-format itself" in w for w in own.warnings)


def test_a_sharded_copy_given_as_model(env: Path, tmp_path: Path) -> None:
    copy = make_copy(env)
    spec = build_spec(options(str(copy)), runs_dir=str(tmp_path / "runs"))
    assert spec.sharded_copy == str(copy) and spec.served_model_name == "tiny"
    with pytest.raises(PlanError, match="made for TP 2, this plan is TP 1"):
        build_spec(options(str(copy), tp=1), runs_dir=str(tmp_path / "runs"))


def test_hub_id_needs_a_local_copy_to_start(env: Path, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no completed local copy") as err:
        build_spec(options("org/tiny"), runs_dir=str(tmp_path / "runs"))
    assert "harness fetch org/tiny" in (err.value.hint or "")
    planned = build_spec(options("org/tiny"), runs_dir=str(tmp_path / "runs"), for_start=False)
    assert planned.model == "org/tiny" and any("serve refuses" in w for w in planned.warnings)
    copy = tmp_path / "models" / "hf" / "org" / "tiny"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text(json.dumps(CONFIG))
    write_marker(copy, {"model": "org/tiny"})
    spec = build_spec(options("org/tiny"), runs_dir=str(tmp_path / "runs"))
    assert spec.model == str(copy) and spec.served_model_name == "org/tiny"
    assert any("serving the local copy of org/tiny" in w for w in spec.warnings)


def test_the_simulated_engine_keeps_its_model_name(env: Path, tmp_path: Path) -> None:
    spec = build_spec(options("sim", engine="sim"), runs_dir=str(tmp_path / "runs"))
    assert spec.model == "sim"
