"""Is a pre-sharded checkpoint complete? The shard's tensors against what the engine expects.

What vLLM's sharded-state loader expects is every parameter of the model on every rank
(``Missing keys (...) in loaded state!`` otherwise). harness derives that list from the source
checkpoint: its tensor names, renamed the way vLLM stacks them into fused layers (``q_proj``,
``k_proj``, ``v_proj`` -> ``qkv_proj``; ``gate_proj``, ``up_proj`` -> ``gate_up_proj``; MoE
experts -> ``w13_*`` / ``w2_*``), without buffers vLLM recomputes (rotary caches) and without
``lm_head`` when the embeddings are tied. Every expected tensor must be in every rank's files,
and (for floating-point tensors) the ranks together must hold at least as many elements as the
source's tensors they are made of: a TP split partitions a tensor or replicates it, never
shrinks it.

Reading is through ``safetensors`` (names, dtypes and shapes from each file's header; no tensor
is loaded). The comparison itself (:func:`compare`) is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from harness.errors import BadInput
from harness.userfiles import MIB, read_user_text

#: (source name pattern, vLLM name) for the fused layers; applied in order.
_STACKED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.experts\.\d+\.(gate_proj|up_proj|w1|w3)\.(\w+)$"), r".experts.w13_\2"),
    (re.compile(r"\.experts\.\d+\.(down_proj|w2)\.(\w+)$"), r".experts.w2_\2"),
    (re.compile(r"\.(q_proj|k_proj|v_proj)\.(\w+)$"), r".qkv_proj.\2"),
    (re.compile(r"\.(gate_proj|up_proj)\.(\w+)$"), r".gate_up_proj.\2"),
)
#: Buffers vLLM recomputes and never loads.
_SKIPPED = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
SHARD_FILE = re.compile(r"^model-rank-(\d+)-part-(\d+)\.safetensors$")

#: A tensor of a checkpoint header: dtype and shape.
TensorInfo = tuple[str, tuple[int, ...]]


def vllm_name(source_name: str) -> str:
    """The parameter a source tensor is loaded into, in vLLM's fused naming."""
    for pattern, replacement in _STACKED:
        if pattern.search(source_name):
            return pattern.sub(replacement, source_name)
    return source_name


@dataclass(frozen=True)
class Expected:
    """One parameter the engine expects and the source tensors it is made of."""

    name: str
    sources: tuple[str, ...]
    elements: int | None


def expected_tensors(
    source: Mapping[str, TensorInfo], *, tie_word_embeddings: bool = False
) -> list[Expected]:
    """What the loader will want, from the source checkpoint's tensors."""
    groups: dict[str, list[str]] = {}
    for name in sorted(source):
        if name.endswith(_SKIPPED) or name.endswith("num_batches_tracked"):
            continue
        if tie_word_embeddings and name.endswith("lm_head.weight"):
            continue
        groups.setdefault(vllm_name(name), []).append(name)
    out = []
    for name, members in sorted(groups.items()):
        floats = all(source[m][0] in _FLOAT_DTYPES for m in members)
        elements = sum(prod(source[m][1]) for m in members) if floats else None
        out.append(Expected(name, tuple(members), elements))
    return out


@dataclass
class Verdict:
    """The comparison of a shard with the source."""

    tp: int
    expected: list[Expected]
    ranks: list[int]
    missing: dict[str, list[int]] = field(default_factory=dict)
    short: dict[str, tuple[int, int]] = field(default_factory=dict)
    missing_ranks: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.short or self.missing_ranks)

    def missing_names(self) -> list[str]:
        return sorted(self.missing)


def _find(name: str, keys: Mapping[str, TensorInfo]) -> str | None:
    """The shard key holding ``name``: the same name, or one that ends with it once the first
    component is dropped (vLLM may nest the language model, e.g. ``language_model.model.``)."""
    if name in keys:
        return name
    tail = name.split(".", 1)[-1]
    for key in keys:
        if key.endswith("." + tail):
            return key
    return None


def compare(
    expected: Sequence[Expected], shard: Mapping[int, Mapping[str, TensorInfo]], tp: int
) -> Verdict:
    """Every expected tensor on every rank ``0..tp-1``, and no tensor smaller in total than
    the source's."""
    verdict = Verdict(tp=tp, expected=list(expected), ranks=sorted(shard))
    verdict.missing_ranks = [r for r in range(tp) if r not in shard]
    for item in expected:
        total = 0
        exact = item.elements is not None
        for rank in range(tp):
            keys = shard.get(rank)
            if keys is None:
                continue
            key = _find(item.name, keys)
            if key is None:
                verdict.missing.setdefault(item.name, []).append(rank)
                continue
            dtype, shape = keys[key]
            if dtype not in _FLOAT_DTYPES:
                exact = False
            total += prod(shape)
        if item.name in verdict.missing or verdict.missing_ranks:
            continue
        if exact and item.elements is not None and total < item.elements:
            verdict.short[item.name] = (total, item.elements)
    return verdict


# -------------------------------------------------------------------------------------- I/O


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of a safetensors file (header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            out: dict[str, TensorInfo] = {}
            for key in fh.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                piece = fh.get_slice(key)
                out[key] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
            return out
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a readable safetensors file ({exc})") from None


def source_tensors(model_dir: Path) -> dict[str, TensorInfo]:
    """Every tensor of a source checkpoint (its safetensors files, or the names in a weight
    index when the weights are .bin). Bad input when there is nothing harness can read."""
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        out: dict[str, TensorInfo] = {}
        for file in files:
            out.update(read_header(file))
        return out
    index = model_dir / "pytorch_model.bin.index.json"
    if index.is_file():
        text = read_user_text(index, what="weight index", kind="JSON", max_bytes=64 * MIB)
        try:
            weight_map = json.loads(text).get("weight_map")
        except (ValueError, AttributeError):
            weight_map = None
        if isinstance(weight_map, dict):
            return {str(name): ("?", ()) for name in weight_map}
        raise BadInput(f"{index}: has no weight_map")
    raise BadInput(
        f"{model_dir} has no safetensors files and no pytorch_model.bin.index.json: harness "
        "cannot list its tensors to verify a shard",
        hint="convert the checkpoint to safetensors first",
    )


def shard_tensors(
    shard_dir: Path,
) -> tuple[dict[int, dict[str, TensorInfo]], list[tuple[str, int, int]]]:
    """Each rank's tensors (all its parts), and the files as (name, size, rank)."""
    ranks: dict[int, dict[str, TensorInfo]] = {}
    files: list[tuple[str, int, int]] = []
    for path in sorted(shard_dir.iterdir()):
        match = SHARD_FILE.match(path.name)
        if not match:
            continue
        rank = int(match.group(1))
        ranks.setdefault(rank, {}).update(read_header(path))
        files.append((path.name, path.stat().st_size, rank))
    return ranks, files


def tied_embeddings(model_dir: Path) -> bool:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    text = config.get("text_config")
    value = config.get("tie_word_embeddings")
    if value is None and isinstance(text, dict):
        value = text.get("tie_word_embeddings")
    return bool(value)


#: Suffixes of the weights of linear layers (the ones vLLM's CPU backend repacks).
_LINEAR = re.compile(r"(qkv_proj|o_proj|gate_up_proj|down_proj|dense|fc\d?|proj)\.weight$")


def cause(verdict: Verdict, device: str) -> str:
    """The known reason for missing tensors, or a general one."""
    names = verdict.missing_names()
    if device == "cpu" and names and all(_LINEAR.search(n) for n in names):
        return (
            "vLLM's CPU backend repacks the linear layers for its GEMM kernels after loading "
            "(oneDNN or sgl-kernel; dispatch_cpu_unquantized_gemm with remove_weight=True) and "
            "drops their weights, so save_sharded_state writes them empty and they are left out; "
            "serving this shard fails with `Missing keys ... in loaded state!`"
        )
    return (
        "the engine's saved state lacks parameters its sharded-state loader requires; serving "
        "this shard would fail with `Missing keys ... in loaded state!`"
    )
