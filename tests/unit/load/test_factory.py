from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from harness.load.factory import COMPLETIONS_PATH, Overrides, RequestFactory
from harness.load.images import cap_size, make_image
from harness.load.tokenizer import WORDS, HFTokenizer, WordTokenizer, load_tokenizer
from harness.load.workload import load_workload, parse_workload
from tests.conftest import have_module, require


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    # tokenizers comes with the [tiny] extra (and vLLM): a missing one fails under CI=true.
    require(have_module("tokenizers"), "tokenizers (pip install 'harness[tiny]')")
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(50)], trainer)
    return HFTokenizer(tok, "test-bpe")


def _factory(text: str, tokenizer: object = None, **over: object) -> RequestFactory:
    return RequestFactory(
        parse_workload(text),
        model="m",
        seed=1,
        tokenizer=tokenizer or WordTokenizer(),  # type: ignore[arg-type]
        overrides=Overrides(**over),  # type: ignore[arg-type]
    )


def test_deterministic_per_index() -> None:
    wl, _ = load_workload("chat-short")
    f1 = RequestFactory(wl, model="m", seed=3, tokenizer=WordTokenizer())
    f2 = RequestFactory(wl, model="m", seed=3, tokenizer=WordTokenizer())
    assert [f1.build(i).body for i in (5, 0, 9)] == [f2.build(i).body for i in (5, 0, 9)]
    assert f1.build(1).body != f1.build(2).body
    f3 = RequestFactory(wl, model="m", seed=4, tokenizer=WordTokenizer())
    assert f3.build(1).body != f1.build(1).body


def test_chat_body_shape() -> None:
    req = _factory("api: chat\nignore_eos: true\n", prompt_tokens=12, max_tokens=7).build(0)
    assert req.path == "/v1/chat/completions"
    assert req.body["messages"][0]["role"] == "user"
    assert req.body["max_tokens"] == 7 and req.max_tokens == 7
    assert req.body["stream"] is True and req.body["stream_options"] == {"include_usage": True}
    assert req.body["ignore_eos"] is True
    assert len(req.body["messages"][0]["content"].split()) == 12 == req.prompt_tokens


def test_completions_override_and_extra_body() -> None:
    req = _factory("extra_body: {top_p: 0.5}\nstream: false\n", api="completions").build(0)
    assert req.path == COMPLETIONS_PATH and "prompt" in req.body
    assert req.body["top_p"] == 0.5 and "stream" not in req.body


@pytest.mark.parametrize("n", [1, 7, 32, 200, 1000])
def test_exact_prompt_length_with_a_real_tokenizer(bpe: HFTokenizer, n: int) -> None:
    f = _factory("api: completions\n", tokenizer=bpe, prompt_tokens=n)
    for i in range(5):
        req = f.build(i)
        assert len(bpe.encode(req.body["prompt"])) == n == req.prompt_tokens


def test_cap_size_keeps_aspect_and_limit() -> None:
    assert cap_size(100, 100, None) == (100, 100)
    assert cap_size(100, 100, 20_000) == (100, 100)
    w, h = cap_size(4096, 4096, 1_000_000)
    assert w * h <= 1_000_000 and abs(w - h) <= 1 and w >= 999
    w, h = cap_size(8192, 1024, 1_000_000)
    assert w * h <= 1_000_000 and 7.9 < w / h < 8.1


def test_images_are_decodable_unique_and_capped() -> None:
    text = (
        "api: chat\nimages:\n  count: 2\n  format: mixed\n  sizes:\n"
        "    - {width: 64, height: 48}\n    - {width: 4000, height: 3000}\n"
    )
    f = _factory(text, max_image_pixels=10_000)
    urls = []
    for i in range(4):
        req = f.build(i)
        parts = req.body["messages"][-1]["content"]
        assert parts[0]["type"] == "text"
        assert len(req.images) == 2
        for part, plan in zip(parts[1:], req.images, strict=True):
            url = part["image_url"]["url"]
            urls.append(url)
            header, b64 = url.split(",", 1)
            img = Image.open(io.BytesIO(base64.b64decode(b64)))
            assert img.size == (plan.sent_width, plan.sent_height)
            assert img.size[0] * img.size[1] <= 10_000
            assert (img.format == "PNG") == (plan.format == "png") == ("png" in header)
            assert plan.bytes == len(base64.b64decode(b64))
    assert len(set(urls)) == len(urls)
    assert f.build(2).body == f.build(2).body


def test_image_limit_per_request_keeps_the_first_images() -> None:
    text = (
        "api: chat\nimages:\n  count: {dist: uniform, min: 1, max: 4}\n  format: mixed\n"
        "  sizes:\n    - {width: 64, height: 48}\n    - {width: 40, height: 30, format: png}\n"
    )
    free = _factory(text)
    capped = _factory(text, max_images_per_request=2)
    assert capped.max_images_per_request == 2
    counts = []
    for i in range(20):
        full, limited = free.build(i), capped.build(i)
        counts.append(len(full.images))
        # Same draws: the capped request carries the first images of the uncapped one.
        assert limited.images == full.images[:2]
        assert limited.body["messages"][-1]["content"] == full.body["messages"][-1]["content"][:3]
        # The rest of the request is the same too.
        assert limited.prompt_tokens == full.prompt_tokens
        assert limited.max_tokens == full.max_tokens
    assert max(counts) > 2, "the workload asked for more than the limit"


def test_per_size_format_overrides_the_spec() -> None:
    text = (
        "api: chat\nimages:\n  count: 3\n  format: jpeg\n  sizes:\n"
        "    - {width: 64, height: 48, format: png}\n    - {width: 48, height: 64}\n"
    )
    f = _factory(text)
    plans = [plan for i in range(8) for plan in f.build(i).images]
    assert {p.format for p in plans if p.width == 64} == {"png"}
    assert {p.format for p in plans if p.width == 48} == {"jpeg"}


def test_vlm_mixed_is_realistic_and_within_vlm_safe_image_count() -> None:
    wl, _ = load_workload("vlm-mixed")
    assert wl.images is not None
    sizes = {(s.width, s.height): s.format for s in wl.images.sizes}
    assert (4000, 3000) in sizes  # 12 MP phone photo
    assert sizes[(1920, 1080)] == "png"  # screenshot
    assert (2480, 3508) in sizes  # A4 at 300 dpi
    assert (224, 224) in sizes  # thumbnail
    assert wl.images.count.upper == 2  # vlm-safe's --limit-mm-per-prompt


def test_make_image_deterministic() -> None:
    assert make_image(32, 16, "png", (1, 2, 3)) == make_image(32, 16, "png", (1, 2, 3))
    assert make_image(32, 16, "png", (1, 2, 3)) != make_image(32, 16, "png", (1, 2, 4))


def test_load_tokenizer_fallbacks(tmp_path: object) -> None:
    tok, note = load_tokenizer(None)
    assert not tok.exact and note
    tok, note = load_tokenizer("meta-llama/Llama-3-8B")
    assert not tok.exact and note is not None and "approximate" in note
