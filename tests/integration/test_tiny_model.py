"""``harness tiny-model``: both kinds build offline to identical bytes every time, and the VLM's
own processor (transformers) turns an image into one token per 28×28 pixels up to its
``max_pixels``, which vlm-safe's ``max_pixels`` lowers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.hostfacts import model_facts
from harness.tinymodel import VLM_MAX_PIXELS, VLM_PIXELS_PER_TOKEN, existing_kind
from tests.conftest import have_module, require
from tests.integration.harnesscli import run

pytestmark = pytest.mark.integration

VLM_SAFE_MAX_PIXELS = 1003520  # profiles/vlm-safe.yaml


def build(dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(None, "tiny-model", str(dest), *args, timeout=300)


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module", autouse=True)
def _needs_torch() -> None:
    require(have_module("transformers") and have_module("torch"), "transformers + torch")


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """One build per kind for the module (the first of each determinism pair)."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            dest = tmp_path_factory.mktemp(kind) / f"tiny-{kind}"
            done = build(dest, "--kind", kind)
            assert done.returncode == 0, done.stderr
            assert done.stderr == "", "a build prints nothing but its result line"
            made[kind] = dest
        return made[kind]

    return get


@pytest.mark.parametrize("kind", ["text", "vlm", "qwen2-vl"])
def test_builds_are_identical_bytes(
    tmp_path: Path, kind: str, builds: Callable[[str], Path]
) -> None:
    first, second = builds(kind), tmp_path / "again"
    done = build(second, "--kind", kind)
    assert done.returncode == 0, done.stderr
    assert files(first) == files(second)
    assert existing_kind(first) == kind
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    if kind != "text":
        expected.add("preprocessor_config.json")
    assert expected <= set(files(first))
    # What harness plan reads: heads and KV heads split by 2 (a VLM's under text_config).
    facts = model_facts(str(first))
    assert (facts.num_attention_heads, facts.num_kv_heads) == (4, 2)


def test_a_directory_of_the_other_kind_is_refused(tmp_path: Path) -> None:
    assert build(tmp_path / "m", "--kind", "vlm").returncode == 0
    before = files(tmp_path / "m")
    refused = build(tmp_path / "m")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: {tmp_path / 'm'} already holds the vlm tiny model")
    assert files(tmp_path / "m") == before
    again = build(tmp_path / "m", "--kind", "vlm")
    assert again.returncode == 0 and "tiny model in" in again.stdout
    # --overwrite rebuilds as the other kind and leaves nothing of the VLM behind.
    assert build(tmp_path / "m", "--overwrite").returncode == 0
    assert existing_kind(tmp_path / "m") == "text"
    assert not (tmp_path / "m" / "preprocessor_config.json").exists()


# vlm-safe passes max_pixels, which transformers 5.19 still takes (and vLLM's PaddleOCR-VL
# processor reads) but calls deprecated.
@pytest.mark.filterwarnings("ignore:Passing `min_pixels` and `max_pixels`:FutureWarning")
def test_vlm_processor_tokens_grow_with_the_image_up_to_max_pixels(
    builds: Callable[[str], Path],
) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(builds("vlm"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        prompt
        == "<|user|>\n<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>hi<|end|>\n<|assistant|>\n"
    )

    def image_tokens(width: int, height: int, **kwargs: int) -> int:
        out = processor(
            text=[prompt], images=[Image.new("RGB", (width, height))], return_tensors="pt", **kwargs
        )
        count = int((out["input_ids"][0] == processor.image_token_id).sum())
        t, h, w = (int(x) for x in out["image_grid_thw"][0])
        assert count == t * h * w // 4
        return count

    # One token per 28×28 pixels: 224² is 8×8 tokens.
    assert image_tokens(224, 224) == 64
    # A 12 MP photo: 107×143 tokens, under the model's own cap (12845056 px = 16384 tokens).
    assert image_tokens(4000, 3000) == 107 * 143 == 15301
    # A 48 MP one is scaled down to the cap.
    assert image_tokens(8000, 6000) <= VLM_MAX_PIXELS // VLM_PIXELS_PER_TOKEN
    # vlm-safe's max_pixels: 12 MP costs what the image the processor scales it to costs.
    capped = image_tokens(4000, 3000, max_pixels=VLM_SAFE_MAX_PIXELS)
    assert capped == 30 * 41 == image_tokens(41 * 28, 30 * 28, max_pixels=VLM_SAFE_MAX_PIXELS)
    assert capped <= VLM_SAFE_MAX_PIXELS // VLM_PIXELS_PER_TOKEN


def test_qwen2_vl_answers_with_an_image_in_transformers(builds: Callable[[str], Path]) -> None:
    # vLLM's and LMDeploy's Qwen2-VL paths need torchvision (GPU hosts: tests/integration/
    # test_vlm_gpu.py); here transformers runs it: the image processor (PIL), the chat
    # template's image placeholder, and generation from the image's tokens.
    import torch
    from PIL import Image
    from transformers import (
        AutoTokenizer,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    model_dir = builds("qwen2-vl")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    images = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>hi" in prompt
    pixels = images(images=[Image.new("RGB", (640, 480))], return_tensors="pt")
    count = int(pixels["image_grid_thw"][0].prod()) // 4
    assert count == 17 * 23  # 476x644 after the resize, one token per 28x28
    inputs = tokenizer(
        prompt.replace("<|image_pad|>", "<|image_pad|>" * count), return_tensors="pt"
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    out = model.generate(
        **inputs,
        pixel_values=pixels["pixel_values"].to(torch.bfloat16),
        image_grid_thw=pixels["image_grid_thw"],
        max_new_tokens=4,
        do_sample=False,
    )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
