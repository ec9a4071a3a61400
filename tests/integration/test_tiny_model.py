"""``harness tiny-model``: both kinds build offline to identical bytes every time, and the VLM's
own processor (transformers) turns an image into one token per 28×28 pixels up to its
``max_pixels``, which vlm-safe's ``max_pixels`` lowers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.hostfacts import model_facts
from harness.tinymodel import VLM_MAX_PIXELS, VLM_PIXELS_PER_TOKEN, existing_kind
from tests.conftest import have_module, require

pytestmark = pytest.mark.integration

VLM_SAFE_MAX_PIXELS = 1003520  # profiles/vlm-safe.yaml


def build(dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "tiny-model", str(dest), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module", autouse=True)
def _needs_torch() -> None:
    require(have_module("transformers") and have_module("torch"), "transformers + torch")


@pytest.fixture(scope="module")
def vlm_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("vlm") / "tiny-vlm"
    done = build(dest, "--kind", "vlm")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "a build prints nothing but its result line"
    return dest


@pytest.mark.parametrize("kind", ["text", "vlm"])
def test_builds_are_identical_bytes(tmp_path: Path, kind: str, vlm_build: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    if kind == "vlm":
        first = vlm_build
    for dest in (first, second) if kind == "text" else (second,):
        done = build(dest, "--kind", kind)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", "a build prints nothing but its result line"
    assert files(first) == files(second)
    assert existing_kind(first) == kind
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    if kind == "vlm":
        expected.add("preprocessor_config.json")
    assert expected <= set(files(first))
    # What harness plan reads: heads and KV heads split by 2 (the VLM's under text_config).
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
def test_vlm_processor_tokens_grow_with_the_image_up_to_max_pixels(vlm_build: Path) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm_build)
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
