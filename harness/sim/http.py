"""A small HTTP/1.1 server on asyncio streams, just what the simulator needs (I/O).

Keep-alive, ``Content-Length`` request bodies, JSON/text responses and chunked streaming
responses. The standard library has no asyncio HTTP server and the simulator must be cheap
per request (it is the near-zero-cost target of the client benchmark), so it is written here
rather than pulled in with a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
MAX_HEAD = 64 * 1024
MAX_BODY = 512 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    """A full response (``body``) or a streamed one (``stream`` yields chunks to send)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncIterator[bytes] | None = None
    chunks: list[bytes] | None = None  # a chunked response known in full: written at once

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(obj, separators=(",", ":")).encode(), headers=headers or {})


Handler = Callable[[Request], Awaitable[Response]]


def _head(status: int, content_type: str, extra: dict[str, str], length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-type: {content_type}"]
    if length is None:
        lines.append("transfer-encoding: chunked")
    else:
        lines.append(f"content-length: {length}")
    lines.extend(f"{k}: {v}" for k, v in extra.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _watch_eof(reader: asyncio.StreamReader, task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` when the client closes the connection mid-response."""
    with contextlib.suppress(Exception):
        data = await reader.read(1)
        if not data:
            task.cancel()


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Serve requests on one connection until the client closes it."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                writer.write(_head(413, "text/plain", {"connection": "close"}, 0))
                return
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                writer.write(_head(400, "text/plain", {"connection": "close"}, 0))
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                writer.write(_head(411, "text/plain", {"connection": "close"}, 0))
                return
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                writer.write(_head(413, "text/plain", {"connection": "close"}, 0))
                return
            body = await reader.readexactly(length) if length else b""
            path = target.split("?", 1)[0]
            resp = await handler(Request(method, path, headers, body))
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            extra = dict(resp.headers)
            if close:
                extra["connection"] = "close"
            if resp.chunks is not None:
                out = [_head(resp.status, resp.content_type, extra, None)]
                out.extend(b"%x\r\n%b\r\n" % (len(c), c) for c in resp.chunks if c)
                out.append(b"0\r\n\r\n")
                writer.write(b"".join(out))
            elif resp.stream is None:
                writer.write(
                    _head(resp.status, resp.content_type, extra, len(resp.body)) + resp.body
                )
            else:
                await _send_stream(reader, writer, resp, extra)
            if close:
                return
            if writer.transport.get_write_buffer_size() > 256 * 1024:
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _send_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    resp: Response,
    extra: dict[str, str],
) -> None:
    assert resp.stream is not None
    writer.write(_head(resp.status, resp.content_type, extra, None))
    this = asyncio.current_task()
    watcher: asyncio.Task[None] | None = None
    try:
        async for chunk in resp.stream:
            if chunk:
                writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if watcher is None and this is not None:
                    # Only a response that waits between chunks needs to notice a client
                    # leaving; start the watcher after the first chunk.
                    watcher = asyncio.create_task(_watch_eof(reader, this))
                if writer.transport.get_write_buffer_size() > 64 * 1024:
                    await writer.drain()
        writer.write(b"0\r\n\r\n")
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher


async def start_server(handler: Handler, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` and serve ``handler``."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, handler)

    return await asyncio.start_server(on_connect, host, port, limit=MAX_HEAD, backlog=1024)
