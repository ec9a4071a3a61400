from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import PlanError
from harness.hostfacts import classify_model, detect, model_facts
from harness.plan import ModelFacts


def test_local_model_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert classify_model("m") == (str(tmp_path / "m"), True)
    assert classify_model("./m/") == (str(tmp_path / "m"), True)


@pytest.mark.parametrize("hub_id", ["gpt2", "Qwen/Qwen2.5-0.5B-Instruct"])
def test_hub_ids(hub_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert classify_model(hub_id) == (hub_id, False)


def test_missing_paths_and_bad_dirs(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        classify_model(str(tmp_path / "nope"))
    with pytest.raises(PlanError, match="does not exist"):
        classify_model("./nope")
    with pytest.raises(PlanError, match=r"no config\.json"):
        classify_model(str(tmp_path))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PlanError, match="is a file"):
        classify_model(str(f))


def test_detect_overrides_and_bad_iface() -> None:
    facts = detect(device="cpu", iface="lo")
    assert facts.device == "cpu" and facts.iface == "lo" and facts.host_ip == "127.0.0.1"
    assert facts.cpu_count >= 1
    with pytest.raises(PlanError, match="not an interface here"):
        detect(iface="nope0")


def _model(tmp_path: Path, config: object) -> str:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    return str(d)


def test_model_facts_of_a_llama_config(tmp_path: Path) -> None:
    # What `harness tiny-model` writes (LlamaConfig): 4 heads, 2 KV heads.
    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}
    facts = model_facts(_model(tmp_path, {"model_type": "llama", **config}))
    assert facts == ModelFacts(
        source=str(tmp_path / "m" / "config.json"),
        num_attention_heads=4,
        num_kv_heads=2,
        vocab_size=512,
    )


def test_model_facts_follow_vllms_names(tmp_path: Path) -> None:
    # No KV-head count: as many KV heads as heads (multi-head attention).
    assert model_facts(_model(tmp_path, {"n_head": 12, "vocab_size": 50257})).num_kv_heads == 12
    # Falcon before the new decoder architecture: multi-query, one KV head.
    falcon = {"model_type": "falcon", "num_attention_heads": 71, "multi_query": True}
    assert model_facts(_model(tmp_path, falcon)).num_kv_heads == 1
    chatglm = {"num_attention_heads": 32, "multi_query_group_num": 2, "padded_vocab_size": 65024}
    facts = model_facts(_model(tmp_path, chatglm))
    assert (facts.num_kv_heads, facts.vocab_size) == (2, 65024)
    # Multimodal: the language model's sub-config.
    llava = {"text_config": {"num_attention_heads": 32, "num_key_value_heads": 8}, "vision": {}}
    facts = model_facts(_model(tmp_path, llava))
    assert (facts.num_attention_heads, facts.num_kv_heads) == (32, 8)
    # Latent attention (DeepSeek MLA): no KV-head rule.
    mla = {"num_attention_heads": 128, "num_key_value_heads": 128, "kv_lora_rank": 512}
    assert model_facts(_model(tmp_path, mla)).num_kv_heads is None
    # Nothing stated, or stated oddly: nothing to check.
    assert model_facts(_model(tmp_path, {"num_attention_heads": "4"})) == ModelFacts(
        source=str(tmp_path / "m" / "config.json")
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[1, 2]", "a model's config.json is a JSON object"),
        (b"{", "not JSON: "),
        (b"\x89PNG\r\n", "not UTF-8 text (byte 0x89 at line 1, column 1"),
        (b"", "empty file"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_model_config_that_cannot_be_read(tmp_path: Path, content: bytes, problem: str) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_bytes(content)
    with pytest.raises(PlanError) as info:
        model_facts(str(d))
    assert str(info.value).startswith(f"{d}/config.json: {problem}")
