"""The simulator's OpenAI shapes: one envelope for stream chunks and full bodies; requests
refused as the engine refuses them."""

from __future__ import annotations

import json

import pytest

from harness.sim.openai import DONE, ApiError, Completion, count_prompt_tokens, read_generation


def events(stream: bytes) -> list[dict[str, object]]:
    parts = stream.split(b"\n\n")
    assert parts[-2:] == [DONE.strip(), b""]
    return [json.loads(p.removeprefix(b"data: ")) for p in parts[:-2]]


@pytest.mark.parametrize("chat", [True, False])
def test_stream_and_body_share_one_envelope(chat: bool) -> None:
    answer = Completion("rid-1", chat, "m", 1700000000, prompt_tokens=4, n=3)
    chunks = events(answer.whole_stream(usage_wanted=True))
    body = json.loads(answer.full_body("".join(answer.token(i) for i in range(3))))
    keys = ["id", "object", "created", "model", "choices"]
    assert list(body) == [*keys, "usage"]
    assert all(list(c)[:5] == keys for c in chunks)
    assert {c["id"] for c in chunks} == {body["id"]} == {"rid-1"}
    assert body["object"] == ("chat.completion" if chat else "text_completion")
    assert chunks[0]["object"] == ("chat.completion.chunk" if chat else "text_completion")
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == body["usage"]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    tokens = chunks[1:-1] if chat else chunks[:-1]
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None, None, "length"]
    text = "".join(
        c["choices"][0]["delta"]["content"] if chat else c["choices"][0]["text"] for c in tokens
    )
    message = body["choices"][0]["message"]["content"] if chat else body["choices"][0]["text"]
    assert text == message
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_requests_are_refused_like_the_engine_refuses_them() -> None:
    def refused(body: object, chat: bool = True) -> tuple[int, str]:
        with pytest.raises(ApiError) as info:
            read_generation(
                body, chat=chat, served=(None, "m"), default_max_tokens=16, max_model_len=100
            )
        return info.value.status, info.value.message

    assert refused([1]) == (400, "request body is not a JSON object")
    assert refused({"model": "x", "messages": []}) == (404, "The model `x` does not exist.")
    assert refused({"prompt": "hi"}) == (400, "messages is required")
    assert refused({"messages": "hi"}, chat=False) == (400, "prompt is required")
    assert refused({"messages": [], "max_tokens": 0})[0] == 400
    assert "maximum context length is 100" in refused({"messages": [], "max_tokens": 100})[1]
    gen = read_generation(
        {"messages": [{"role": "user", "content": "a b c"}], "stream": True,
         "stream_options": {"include_usage": True}},
        chat=True, served=(None, "m"), default_max_tokens=16, max_model_len=100,
    )  # fmt: skip
    assert (gen.max_tokens, gen.prompt_tokens, gen.stream, gen.usage_wanted) == (16, 3, True, True)


def test_prompt_tokens_count_words_and_images() -> None:
    content = [{"type": "text", "text": "two words"}, {"type": "image_url", "image_url": {}}]
    assert count_prompt_tokens({"messages": [{"role": "user", "content": content}]}) == 66
    assert count_prompt_tokens({"prompt": ""}) == 1
