"""Gather the facts the pure planner needs about this machine and the model (I/O lives here,
not in plan.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import psutil

from harness.errors import PlanError
from harness.plan import HostFacts, ModelFacts
from harness.userfiles import MODEL_CONFIG_MAX_BYTES, read_user_text

ENGINE_PYTHON_ENV = "HARNESS_ENGINE_PYTHON"


def gpu_count() -> int:
    """NVIDIA GPUs visible here (0 without a driver). ``nvidia-smi -L`` has a deadline."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def default_route_iface() -> str | None:
    """The interface of the default route (``/proc/net/route``), if any."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def iface_ipv4(iface: str) -> str | None:
    for addr in psutil.net_if_addrs().get(iface, []):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None


def detect(
    *,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    iface: str | None = None,
    host_ip: str | None = None,
) -> HostFacts:
    """Facts about this host; ``device``/``iface``/``host_ip`` override detection."""
    gpus = gpu_count()
    chosen: Literal["cpu", "cuda"]
    chosen = ("cuda" if gpus > 0 else "cpu") if device == "auto" else device
    if iface is not None and iface not in psutil.net_if_addrs():
        valid = ", ".join(sorted(psutil.net_if_addrs()))
        raise PlanError(f"--net-iface {iface!r} is not an interface here (valid: {valid})")
    iface = iface or default_route_iface()
    if host_ip is None and iface:
        host_ip = iface_ipv4(iface)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return HostFacts(
        device=chosen,
        cpu_count=cpus,
        gpu_count=gpus,
        python=os.environ.get(ENGINE_PYTHON_ENV) or sys.executable,
        iface=iface,
        host_ip=host_ip,
    )


def classify_model(model: str) -> tuple[str, bool]:
    """``(model, is_local_dir)``: a local directory (made absolute) or a hub id.

    Something that looks like a path but does not exist is bad input (exit 2), not a hub id:
    a typo must not turn into a download attempt.
    """
    expanded = os.path.expanduser(model)
    if os.path.exists(expanded):
        path = Path(expanded).resolve()
        if not path.is_dir():
            raise PlanError(f"model path {model} is a file; give the model's directory")
        if not (path / "config.json").exists():
            raise PlanError(
                f"model directory {model} has no config.json",
                hint="give a Hugging Face model directory, or build one: harness tiny-model DIR",
            )
        return str(path), True
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1
    if looks_like_path:
        raise PlanError(
            f"model path {model} does not exist",
            hint="build the embedded tiny model with: harness tiny-model DIR",
        )
    return model, False


# Where config.json states the heads and the vocabulary, in the order vLLM looks
# (vllm/transformers_utils/model_arch_config_convertor.py; transformers' attribute_map aliases).
_HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads")
_KV_HEAD_KEYS = (
    "n_head_kv",
    "num_kv_heads",
    "num_key_value_heads",
    "multi_query_group_num",
    "num_attention_groups",
)
_VOCAB_KEYS = ("vocab_size", "padded_vocab_size")
# Multimodal models keep the language model's settings in a sub-config.
_TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")


def _count(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's settings: ``text_config`` when it states the heads (what vLLM reads
    for a multimodal model), else the top level, else another sub-config that states them."""
    stated = {
        key: sub
        for key in _TEXT_CONFIG_KEYS
        if isinstance(sub := config.get(key), dict) and _count(sub, _HEAD_KEYS) is not None
    }
    if "text_config" in stated or _count(config, _HEAD_KEYS) is None:
        return stated.get("text_config") or next(iter(stated.values()), config)
    return config


def _kv_heads(config: dict[str, Any], heads: int | None) -> int | None:
    if config.get("kv_lora_rank") or config.get("block_configs"):
        # Multi-head latent attention (one latent KV per rank) and per-layer head counts:
        # the KV-head rule does not apply as such; the engine checks.
        return None
    if (
        config.get("multi_query")
        and not config.get("new_decoder_architecture")
        and str(config.get("model_type", "")).lower().startswith(("falcon", "refinedweb"))
    ):
        return 1  # Falcon's multi-query attention: one KV head
    attn = config.get("attn_config")
    if isinstance(attn, dict) and _count(attn, ("kv_n_heads",)) is not None:
        return _count(attn, ("kv_n_heads",))  # DBRX
    return _count(config, _KV_HEAD_KEYS) or heads


def model_facts(model_dir: str) -> ModelFacts:
    """What ``model_dir/config.json`` says about splitting the model over TP ranks.

    The file is read like every file a user hands in (:func:`~harness.userfiles.read_user_text`):
    binary, not UTF-8, empty, a directory, unreadable, huge or not a JSON object is one
    :class:`~harness.errors.PlanError` line. Counts the file does not state are ``None``.
    """
    path = os.path.join(model_dir, "config.json")
    text = read_user_text(
        path, what="model config", kind="JSON", max_bytes=MODEL_CONFIG_MAX_BYTES, error=PlanError
    )
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"{path}: not JSON: {exc}") from None
    except RecursionError:
        raise PlanError(f"{path}: not JSON harness can read: nested too deeply") from None
    if not isinstance(config, dict):
        raise PlanError(f"{path}: a model's config.json is a JSON object of settings")
    text_config = _text_config(config)
    heads = _count(text_config, _HEAD_KEYS)
    return ModelFacts(
        source=path,
        num_attention_heads=heads,
        num_kv_heads=_kv_heads(text_config, heads),
        vocab_size=_count(text_config, _VOCAB_KEYS),
    )
