"""A shard against the source checkpoint: names as vLLM fuses them, every rank, no shrinking."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import BadInput
from harness.shard import verify as V

# The tiny Llama's checkpoint (one layer), as its safetensors header lists it.
SOURCE: dict[str, V.TensorInfo] = {
    "model.embed_tokens.weight": ("F32", (512, 128)),
    "model.layers.0.self_attn.q_proj.weight": ("F32", (128, 128)),
    "model.layers.0.self_attn.k_proj.weight": ("F32", (64, 128)),
    "model.layers.0.self_attn.v_proj.weight": ("F32", (64, 128)),
    "model.layers.0.self_attn.o_proj.weight": ("F32", (128, 128)),
    "model.layers.0.mlp.gate_proj.weight": ("F32", (256, 128)),
    "model.layers.0.mlp.up_proj.weight": ("F32", (256, 128)),
    "model.layers.0.mlp.down_proj.weight": ("F32", (128, 256)),
    "model.layers.0.input_layernorm.weight": ("F32", (128,)),
    "model.layers.0.self_attn.rotary_emb.inv_freq": ("F32", (16,)),
    "model.norm.weight": ("F32", (128,)),
    "lm_head.weight": ("F32", (512, 128)),
}


def rank_state(*, linear: bool = True, half: int = 2) -> dict[str, V.TensorInfo]:
    """One TP rank of vLLM's saved state (TP=2), optionally without the linear layers."""
    state = {
        "model.embed_tokens.weight": ("BF16", (256, 128)),
        "model.layers.0.input_layernorm.weight": ("BF16", (128,)),
        "model.layers.0.self_attn.attn._k_scale": ("F32", ()),
        "model.norm.weight": ("BF16", (128,)),
        "lm_head.weight": ("BF16", (256, 128)),
    }
    if linear:
        state.update(
            {
                "model.layers.0.self_attn.qkv_proj.weight": ("BF16", (256 // half, 128)),
                "model.layers.0.self_attn.o_proj.weight": ("BF16", (128, 64)),
                "model.layers.0.mlp.gate_up_proj.weight": ("BF16", (256, 128)),
                "model.layers.0.mlp.down_proj.weight": ("BF16", (128, 128)),
            }
        )
    return state


def test_fused_names() -> None:
    assert (
        V.vllm_name("model.layers.3.self_attn.k_proj.weight")
        == "model.layers.3.self_attn.qkv_proj.weight"
    )
    assert (
        V.vllm_name("model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.gate_up_proj.weight"
    )
    assert (
        V.vllm_name("model.layers.1.mlp.experts.7.w3.weight")
        == "model.layers.1.mlp.experts.w13_weight"
    )
    assert (
        V.vllm_name("model.layers.1.mlp.experts.7.down_proj.weight")
        == "model.layers.1.mlp.experts.w2_weight"
    )
    assert V.vllm_name("model.norm.weight") == "model.norm.weight"


def test_expected_tensors_merge_skip_and_tie() -> None:
    names = [e.name for e in V.expected_tensors(SOURCE)]
    assert "model.layers.0.self_attn.qkv_proj.weight" in names
    assert not any("rotary_emb" in n or "q_proj" in n for n in names)
    qkv = next(e for e in V.expected_tensors(SOURCE) if e.name.endswith("qkv_proj.weight"))
    assert qkv.elements == (128 + 64 + 64) * 128 and len(qkv.sources) == 3
    tied = [e.name for e in V.expected_tensors(SOURCE, tie_word_embeddings=True)]
    assert "lm_head.weight" not in tied


def test_complete_shard() -> None:
    verdict = V.compare(V.expected_tensors(SOURCE), {0: rank_state(), 1: rank_state()}, tp=2)
    assert verdict.complete, (verdict.missing, verdict.short)


def test_cpu_backend_shard_misses_the_linear_layers_with_the_cause() -> None:
    verdict = V.compare(
        V.expected_tensors(SOURCE), {0: rank_state(linear=False), 1: rank_state(linear=False)}, tp=2
    )
    assert not verdict.complete
    assert verdict.missing_names() == [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.mlp.gate_up_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.self_attn.qkv_proj.weight",
    ]
    assert verdict.missing["model.layers.0.mlp.down_proj.weight"] == [0, 1]
    assert "CPU backend repacks the linear layers" in V.cause(verdict, "cpu")
    assert "CPU backend" not in V.cause(verdict, "cuda")


def test_a_missing_rank_and_a_shrunken_tensor() -> None:
    verdict = V.compare(V.expected_tensors(SOURCE), {0: rank_state()}, tp=2)
    assert verdict.missing_ranks == [1] and not verdict.complete
    small = V.compare(
        V.expected_tensors(SOURCE), {0: rank_state(half=4), 1: rank_state(half=4)}, tp=2
    )
    assert list(small.short) == ["model.layers.0.self_attn.qkv_proj.weight"]
    assert small.short["model.layers.0.self_attn.qkv_proj.weight"] == (2 * 64 * 128, 256 * 128)


def test_nested_language_model_names_match() -> None:
    nested = {f"language_model.{k}": v for k, v in rank_state().items()}
    assert V.compare(V.expected_tensors(SOURCE), {0: nested, 1: nested}, tp=2).complete


def test_unreadable_files_are_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(BadInput, match="not a readable safetensors file"):
        V.source_tensors(tmp_path)
    with pytest.raises(BadInput, match="cannot list its tensors"):
        V.source_tensors(tmp_path / "missing")
