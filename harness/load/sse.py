"""Server-sent events of OpenAI-compatible streams (pure): framing and per-request accounting.

:class:`SSEDecoder` turns arbitrary byte chunks into event payloads (``data:`` lines joined per
event). :class:`StreamAccount` turns payloads into the measurements of one request: time of the
first and last token, inter-chunk gaps, the server's request id, usage, finish reason, an
in-stream error.

The ``lean`` mode decodes JSON only where it must (the first chunk for the id, a chunk carrying
usage or an error) and recognises token chunks with one regular-expression search; ``full``
decodes every chunk. Both give the same answers on the chunks vLLM, LMDeploy and ``harness sim``
send (tests check it); lean is cheaper per token, which matters for the client's ceiling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

SSEMode = Literal["lean", "full"]

# A string (possibly empty: a token that decodes to an incomplete UTF-8 sequence is still a
# token) or a tool-call list under a key that carries generated output.
_TOKEN_RE = re.compile(
    rb'"(?:content|text|reasoning_content|reasoning)"\s*:\s*"|"tool_calls"\s*:\s*\['
)
_USAGE_RE = re.compile(rb'"usage"\s*:\s*\{')


class SSEDecoder:
    """Incremental SSE framing: ``feed(bytes) -> [payload, ...]`` (``data:`` field values)."""

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._data.append(value)
            # comments (":...") and other fields (event:, id:, retry:) carry nothing we use
        self._buf = buf[start:]
        return events

    def close(self) -> list[bytes]:
        """Flush a last event the server did not terminate with a blank line."""
        events = self.feed(b"\n\n") if self._buf else []
        if self._data:
            events.append(b"\n".join(self._data))
            self._data = []
        return events


def _has_token(obj: Any) -> bool:
    """A chunk carries a token when a choice has output text (even an empty string, which is a
    token that decodes to an incomplete UTF-8 sequence) or tool calls. vLLM's first chat chunk,
    ``{"role": "assistant", "content": ""}``, is not a token."""
    if not isinstance(obj, dict):
        return False
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("tool_calls"):
                return True
            for key in ("content", "reasoning_content", "reasoning"):
                value = delta.get(key)
                if isinstance(value, str) and (value or "role" not in delta):
                    return True
        if isinstance(choice.get("text"), str):
            return True
    return False


@dataclass
class StreamAccount:
    """Measurements of one streamed response, fed one payload at a time with its arrival time."""

    mode: SSEMode = "lean"
    started: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    token_chunks: int = 0
    chunks: int = 0
    itl: list[float] = field(default_factory=list)
    request_id: str | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False
    _seen_json: bool = False

    def on_event(self, payload: bytes, t: float) -> None:
        """Account one event payload received at ``t`` (``perf_counter`` seconds)."""
        self.chunks += 1
        if payload == b"[DONE]":
            self.done = True
            return
        if self.mode == "full" or not self._seen_json:
            self._on_json(payload, t)
            return
        if _USAGE_RE.search(payload) is not None or b'"error"' in payload:
            self._on_json(payload, t)  # rare chunks: decode fully
            return
        if _TOKEN_RE.search(payload) is not None:
            self._token(t)
        if b'"finish_reason":"' in payload or b'"finish_reason": "' in payload:
            self._finish(payload)

    def _finish(self, payload: bytes) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        self._absorb(obj)

    def _on_json(self, payload: bytes, t: float) -> None:
        self._seen_json = True
        try:
            obj = json.loads(payload)
        except ValueError:
            self.error = "bad_sse_json"
            return
        if _has_token(obj):
            self._token(t)
        self._absorb(obj)

    def _absorb(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if self.request_id is None and isinstance(obj.get("id"), str):
            self.request_id = obj["id"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        err = obj.get("error")
        if err:
            self.error = _error_text(err)
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    def _token(self, t: float) -> None:
        if self.first_token is None:
            self.first_token = t
        elif self.last_token is not None:
            self.itl.append(t - self.last_token)
        self.last_token = t
        self.token_chunks += 1

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the server's usage count when given, else token-carrying chunks."""
        if self.usage is not None:
            value = self.usage.get("completion_tokens")
            if isinstance(value, int):
                return value
        return self.token_chunks

    @property
    def prompt_tokens(self) -> int | None:
        if self.usage is not None:
            value = self.usage.get("prompt_tokens")
            if isinstance(value, int):
                return value
        return None


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or err)
    return str(err)


def error_from_body(body: bytes) -> tuple[str | None, str | None]:
    """``(type, message)`` of an OpenAI-style error body (``{"error": {...}}`` or
    ``{"object": "error", "message": ...}``), best effort."""
    try:
        obj = json.loads(body)
    except ValueError:
        text = body[:300].decode("utf-8", "replace").strip()
        return None, text or None
    if not isinstance(obj, dict):
        return None, str(obj)[:300]
    err = obj.get("error", obj)
    if isinstance(err, dict):
        kind = err.get("type") or err.get("code")
        msg = err.get("message") or err.get("detail")
        return (str(kind) if kind else None), (str(msg)[:500] if msg else None)
    return None, str(err)[:500]
