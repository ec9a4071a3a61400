"""The OpenAI-compatible shapes of the simulated engine (pure): what a generation request asks
for, and the JSON of its answer (streamed chunks with usage, or one body).

Every answer object goes through one envelope (:meth:`Completion.envelope`: ``id``, ``object``,
``created``, ``model``, ``choices``, ``usage``), for the stream's chunks and the full body alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_WORDS_TEXT = (
    "the of and to in is was for on that with as by at from his her an which or be are this "
    "have not but had were they their one all has been more when there who will would so no"
)
_TOKENS = [" " + w for w in _WORDS_TEXT.split()]

#: What one image costs in the simulator's prompt count (it has no vision encoder).
IMAGE_TOKENS = 64


class ApiError(Exception):
    """A request the server answers with an OpenAI error body."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": None,
                "code": self.status,
            }
        }


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Whitespace words of every text in the request (the simulator has no tokenizer), plus a
    fixed 64 per image."""
    n = 0
    if isinstance(body.get("prompt"), str):
        n += len(body["prompt"].split())
    for msg in body.get("messages") or ():
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    n += len(part["text"].split())
                elif part.get("type") in ("image_url", "input_image", "image"):
                    n += IMAGE_TOKENS
    return max(n, 1)


@dataclass(frozen=True)
class Generation:
    """What a valid generation request asks for."""

    max_tokens: int
    prompt_tokens: int
    stream: bool
    usage_wanted: bool  # stream_options.include_usage


def read_generation(
    body: object,
    *,
    chat: bool,
    served: tuple[str | None, ...],
    default_max_tokens: int,
    max_model_len: int,
) -> Generation:
    """Check a ``/v1/chat/completions`` (``chat``) or ``/v1/completions`` request body as the
    engine would; :class:`ApiError` for what it refuses. ``served``: the model names accepted
    (None: no ``model`` given)."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body is not a JSON object", "BadRequestError")
    model = body.get("model")
    if model not in served:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
    if chat and not isinstance(body.get("messages"), list):
        raise ApiError(400, "messages is required", "BadRequestError")
    if not chat and not isinstance(body.get("prompt"), str | list):
        raise ApiError(400, "prompt is required", "BadRequestError")
    raw_n = body.get("max_completion_tokens", body.get("max_tokens"))
    n = default_max_tokens if raw_n is None else raw_n
    if not isinstance(n, int) or n < 1:
        raise ApiError(400, "max_tokens must be a positive integer", "BadRequestError")
    prompt_tokens = count_prompt_tokens(body)
    if prompt_tokens + n > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens.",
            "BadRequestError",
        )
    opts = body.get("stream_options")
    return Generation(
        max_tokens=n,
        prompt_tokens=prompt_tokens,
        stream=bool(body.get("stream")),
        usage_wanted=isinstance(opts, dict) and bool(opts.get("include_usage")),
    )


def models_listing(name: str, root: str, max_model_len: int, created: int) -> dict[str, Any]:
    """``GET /v1/models``: the one served model (``root``: where its files are)."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "harness-sim",
                "root": root,
                "max_model_len": max_model_len,
            }
        ],
    }


@dataclass(frozen=True)
class Completion:
    """The answer to one generation request: request id, chat or text completion, model."""

    rid: str
    chat: bool
    model: str
    created: int
    prompt_tokens: int
    n: int

    def token(self, i: int) -> str:
        """The ``i``-th generated token's text (deterministic per request)."""
        return _TOKENS[(i * 7 + len(self.rid)) % len(_TOKENS)]

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.n,
            "total_tokens": self.prompt_tokens + self.n,
        }

    def envelope(
        self, choices: list[dict[str, Any]], *, chunk: bool, usage: bool = False
    ) -> dict[str, Any]:
        """The object every answer is: a stream chunk (``chunk``) or the full body."""
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else None
        obj: dict[str, Any] = {
            "id": self.rid,
            "object": kind or "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage:
            obj["usage"] = self.usage()
        return obj

    def chunk(self, text: str | None, finish: str | None = None, role: bool = False) -> bytes:
        """One server-sent event of the stream."""
        choice: dict[str, Any]
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _event(self.envelope([choice], chunk=True))

    def usage_chunk(self) -> bytes:
        """The last event before ``[DONE]`` when the client asked for usage."""
        return _event(self.envelope([], chunk=True, usage=True))

    def token_chunk(self, i: int) -> bytes:
        """The event of the ``i``-th token (the last one says ``finish_reason: length``)."""
        return self.chunk(self.token(i), "length" if i == self.n - 1 else None)

    def whole_stream(self, usage_wanted: bool) -> bytes:
        """Every event of the stream at once (no delays)."""
        out = [self.chunk("", role=True)] if self.chat else []
        out.extend(self.token_chunk(i) for i in range(self.n))
        if usage_wanted:
            out.append(self.usage_chunk())
        out.append(DONE)
        return b"".join(out)

    def full_body(self, text: str) -> bytes:
        """The non-streamed answer."""
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        return json.dumps(
            self.envelope([choice], chunk=False, usage=True), separators=(",", ":")
        ).encode()


DONE = b"data: [DONE]\n\n"


def _event(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
