from __future__ import annotations

import random

import pytest

from harness.load.sse import SSEDecoder, StreamAccount, error_from_body

# Captured from vLLM 0.32 (CPU) serving the tiny model: chat, then completions. The third chat
# chunk has empty content: a token that decodes to an incomplete UTF-8 sequence.
VLLM_CHAT = (
    b'data: {"id":"chatcmpl-8355","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
    b'data: {"id":"chatcmpl-8355","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" me"},"logprobs":null,"finish_reason":null,'
    b'"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-8355","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":null,'
    b'"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-8355","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"\xef\xbf\xbdthere"},"logprobs":null,'
    b'"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-8355","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" any"},"logprobs":null,"finish_reason":"length",'
    b'"stop_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-8355","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":14,"total_tokens":18,"completion_tokens":4}}\n\n'
    b"data: [DONE]\n\n"
)
VLLM_COMPLETIONS = (
    b'data: {"id":"cmpl-b169","object":"text_completion","created":1,"model":"m","choices":'
    b'[{"index":0,"text":"gh","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
    b'data: {"id":"cmpl-b169","object":"text_completion","created":1,"model":"m","choices":'
    b'[{"index":0,"text":"","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
    b'data: {"id":"cmpl-b169","object":"text_completion","created":1,"model":"m","choices":'
    b'[{"index":0,"text":" us","logprobs":null,"finish_reason":"length","stop_reason":null}]}\n\n'
    b'data: {"id":"cmpl-b169","object":"text_completion","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":4,"total_tokens":7,"completion_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)


def _split_randomly(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    parts, i = [], 0
    while i < len(data):
        n = rng.randint(1, 40)
        parts.append(data[i : i + n])
        i += n
    return parts


@pytest.mark.parametrize("seed", range(5))
def test_decoder_is_independent_of_chunking(seed: int) -> None:
    whole = SSEDecoder().feed(VLLM_CHAT)
    dec = SSEDecoder()
    pieces = [e for part in _split_randomly(VLLM_CHAT, seed) for e in dec.feed(part)]
    assert pieces == whole
    assert len(whole) == 7 and whole[-1] == b"[DONE]"


def test_decoder_crlf_comments_and_multiline() -> None:
    dec = SSEDecoder()
    events = dec.feed(b": ping\r\n\r\ndata: a\r\ndata: b\r\n\r\nevent: x\ndata:c")
    assert events == [b"a\nb"]
    assert dec.close() == [b"c"]


def _account(stream: bytes, mode: str) -> StreamAccount:
    acc = StreamAccount(mode=mode)  # type: ignore[arg-type]
    dec = SSEDecoder()
    t = 0.0
    for part in dec.feed(stream):
        t += 1.0
        acc.on_event(part, t)
    return acc


@pytest.mark.parametrize("stream", [VLLM_CHAT, VLLM_COMPLETIONS])
def test_lean_and_full_agree(stream: bytes) -> None:
    lean, full = _account(stream, "lean"), _account(stream, "full")
    for attr in (
        "first_token",
        "last_token",
        "token_chunks",
        "itl",
        "request_id",
        "usage",
        "finish_reason",
        "error",
        "done",
    ):
        assert getattr(lean, attr) == getattr(full, attr), attr


def test_chat_accounting() -> None:
    acc = _account(VLLM_CHAT, "lean")
    assert acc.request_id == "chatcmpl-8355"
    assert acc.first_token == 2.0  # the role chunk is not a token
    assert acc.last_token == 5.0
    assert acc.token_chunks == 4  # the empty-content chunk is a token
    assert acc.itl == [1.0, 1.0, 1.0]
    assert acc.output_tokens == 4 and acc.prompt_tokens == 14
    assert acc.finish_reason == "length" and acc.done


def test_completions_accounting() -> None:
    acc = _account(VLLM_COMPLETIONS, "lean")
    assert acc.first_token == 1.0 and acc.token_chunks == 3 and acc.output_tokens == 3


def test_in_stream_error() -> None:
    stream = b'data: {"id":"x","choices":[]}\n\ndata: {"error":{"message":"boom","code":500}}\n\n'
    acc = _account(stream, "lean")
    assert acc.error == "boom"


def test_output_tokens_without_usage_counts_chunks() -> None:
    stream = VLLM_CHAT.replace(b'"usage"', b'"usagx"')
    assert _account(stream, "lean").output_tokens == 4


def test_error_from_body() -> None:
    body = b'{"error":{"message":"<path> is not a multimodal model","type":"BadRequestError","code":400}}'
    assert error_from_body(body) == ("BadRequestError", "<path> is not a multimodal model")
    assert error_from_body(b'{"object":"error","message":"m","type":"t"}') == ("t", "m")
    assert error_from_body(b"Internal Server Error") == (None, "Internal Server Error")
