"""A near-zero-cost OpenAI-compatible streaming server, for the client-ceiling benchmark only.

``harness sim`` builds every answer token by token (JSON encoding, metrics, fault checks); this
server answers from a cache of pre-built responses, so that a load client on another core is
what limits a loopback run. Per request it: finds the end of the head, reads ``Content-Length``
with one regex, reads ``max_tokens``/``max_completion_tokens``, ``"stream": true`` and
``"include_usage": true`` from the body with regexes (no JSON decoding), and writes the cached
bytes for (path, tokens, stream, usage) in one ``write``.

Streams use ``Transfer-Encoding: chunked`` with one HTTP chunk per SSE event, as vLLM's server
sends them: chat streams start with a role chunk (``delta.role``), then N content chunks (the
last with ``finish_reason: "length"``); completions streams send N ``choices[0].text`` chunks;
then a usage chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``. Every
content chunk is one token. The server does not tokenize the prompt: ``usage.prompt_tokens`` is
the ``--prompt-tokens`` constant. Non-streamed requests get one JSON body. Also ``GET /health``
and ``GET /v1/models``. HTTP/1.1 keep-alive; ``Connection: close`` is honoured.

    python benchmarks/fast_openai_server.py --port 8000 [--model sim-model] [--prompt-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from typing import Any

_LEN = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)
_MAX = re.compile(rb'"max_(?:completion_)?tokens"\s*:\s*(\d+)')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_WORDS = [" the", " of", " and", " to", " in", " is", " it", " that"]
_MAX_HEAD = 64 * 1024


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _head(status: int, ctype: bytes, length: int | None) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n\r\n" % (status, reason, ctype, framing)


class Answers:
    """Pre-built response bytes, built once per (path, tokens, stream, usage) and cached."""

    def __init__(self, model: str, prompt_tokens: int) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.created = int(time.time())
        self._cache: dict[tuple[bool, int, bool, bool], bytes] = {}
        health = _head(200, b"text/plain", 0)
        models = _dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "fast-openai-server",
                        "root": model,
                    }
                ],
            }
        )
        self.fixed = {
            b"/health": health,
            b"/v1/models": _head(200, b"application/json", len(models)) + models,
        }
        nf = _dumps({"error": {"message": "no such route", "type": "NotFound", "code": 404}})
        self.not_found = _head(404, b"application/json", len(nf)) + nf

    def get(self, chat: bool, n: int, stream: bool, usage: bool) -> bytes:
        key = (chat, n, stream, usage)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self._build(*key)
        return out

    def _build(self, chat: bool, n: int, stream: bool, usage: bool) -> bytes:
        rid = ("chatcmpl-" if chat else "cmpl-") + "fast0000"
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": rid, "object": obj, "created": self.created, "model": self.model}
        words = [_WORDS[i % len(_WORDS)] for i in range(n)]
        counts = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": self.prompt_tokens + n,
        }
        if not stream:
            text = "".join(words)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            choice.update(logprobs=None, finish_reason="length")
            body = _dumps(
                {
                    **base,
                    "object": "chat.completion" if chat else "text_completion",
                    "choices": [choice],
                    "usage": counts,
                }
            )
            return _head(200, b"application/json", len(body)) + body
        events: list[dict[str, Any]] = []
        if chat:
            delta = {"role": "assistant", "content": ""}
            events.append({**base, "choices": [_choice(chat, delta, None)]})
        for i, w in enumerate(words):
            finish = "length" if i == n - 1 else None
            part: Any = {"content": w} if chat else w
            events.append({**base, "choices": [_choice(chat, part, finish)]})
        if usage:
            events.append({**base, "choices": [], "usage": counts})
        datas = [b"data: " + _dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in datas)
        return _head(200, b"text/event-stream; charset=utf-8", None) + chunks + b"0\r\n\r\n"


def _choice(chat: bool, part: Any, finish: str | None) -> dict[str, Any]:
    if chat:
        return {"index": 0, "delta": part, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "text": part, "logprobs": None, "finish_reason": finish}


class Conn(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order as they complete."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        close = False
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    close = True
                break
            m = _LEN.search(buf, 0, end + 2)
            length = int(m.group(1)) if m else 0
            stop = end + 4 + length
            if len(buf) < stop:
                break
            out.append(self._answer(buf, end, stop))
            if _CLOSE.search(buf, 0, end + 2):
                close = True
                buf = b""
                break
            buf = buf[stop:]
        self.buf = buf
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            self.transport.close()

    def _answer(self, buf: bytes, end: int, stop: int) -> bytes:
        sp = buf.find(b" ")
        path = buf[sp + 1 : buf.find(b" ", sp + 1)].split(b"?", 1)[0]
        a = self.answers
        if path in (b"/v1/chat/completions", b"/v1/completions"):
            body = buf[end + 4 : stop]
            m = _MAX.search(body)
            n = int(m.group(1)) if m else 16
            return a.get(
                path == b"/v1/chat/completions",
                max(n, 1),
                _STREAM.search(body) is not None,
                _USAGE.search(body) is not None,
            )
        return a.fixed.get(path, a.not_found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="sim-model")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="reported in usage")
    args = ap.parse_args()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    answers = Answers(args.model, args.prompt_tokens)
    server = loop.run_until_complete(
        loop.create_server(lambda: Conn(answers), args.host, args.port, backlog=1024)
    )
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"fast-openai-server on http://{args.host}:{args.port}", flush=True)
    try:
        loop.run_until_complete(stop)
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
