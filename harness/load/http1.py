"""HTTP/1.1 responses read on an asyncio protocol, one at a time per keep-alive connection (I/O).

The parser of :mod:`harness.load.transport`: status line, headers, and ``Content-Length`` /
chunked / until-close bodies, with h11's grammar and its refusals (:class:`MalformedResponse`).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import cast

import httpx

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _LENGTH, _CLOSE, DONE = range(7)

#: A response head longer than this is refused (h11's limit for an incomplete event is 16 KiB).
MAX_HEAD_BYTES = 64 * 1024

# The grammar h11 applies (RFC 9112): status line, header field, chunk header.
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: (?:[ \t]|[^\x00\s])*)?")
_HEADER_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
_BLANK_LINE = re.compile(rb"\n\r?\n")


class MalformedResponse(httpx.RemoteProtocolError):
    """The server's bytes break HTTP/1.1 (the cases h11 refuses: conflicting or bad
    ``Content-Length``, an unsupported ``Transfer-Encoding``, a bad status line, header line or
    chunk)."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time.

    The parser follows h11 (httpx's default HTTP/1.1 implementation) where it matters to a
    client: interim ``1xx`` responses (``100 Continue``, ``103 Early Hints``) are skipped and the
    final status is read; ``Content-Length`` must be one number (repeated identical values are
    merged, different ones refused); ``Transfer-Encoding`` must be exactly ``chunked`` and
    wins over ``Content-Length``; ``Connection: close`` or HTTP/1.0 end keep-alive; bare
    ``\\n`` line ends are accepted in the head. A violation ends the request with
    :class:`MalformedResponse` and closes the connection.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.head_done = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.state = DONE
        self.remaining = 0
        self.keep_alive = True
        self.got_bytes = False

    # asyncio.Protocol
    @property
    def buffered(self) -> bool:
        """Whether bytes past the current response arrived (the connection cannot be reused)."""
        return bool(self._buf)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.error is None:
            if self.state == _CLOSE:
                self.state = DONE
            elif self.state != DONE or not self.head_done:
                self.error = exc or ConnectionResetError("server closed the connection")
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.error is not None:
            return
        self._buf += data
        try:
            if not self.head_done and not self._parse_heads():
                return
            self._parse_body()
        except MalformedResponse as exc:
            self.error = exc
            self.keep_alive = False
            self._buf.clear()
            self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _parse_heads(self) -> bool:
        """Parse heads until the final one (skipping interim 1xx); False if more bytes are
        needed."""
        buf = self._buf
        while True:
            if buf[:2] == b"\r\n" or buf[:1] == b"\n":
                raise MalformedResponse("no response line received")
            match = _BLANK_LINE.search(buf)
            if match is None:
                if len(buf) > MAX_HEAD_BYTES:
                    raise MalformedResponse("response head too long")
                return False
            end = match.end()
            head = bytes(buf[: match.start() + 1])
            del buf[:end]
            self._parse_head(head)
            if self.head_done:
                return True

    def _parse_head(self, head: bytes) -> None:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
        if lines and not lines[-1]:
            lines.pop()
        status_line = _STATUS_LINE.fullmatch(lines[0]) if lines else None
        if status_line is None:
            raise MalformedResponse(f"illegal status line: {lines[0][:80]!r}")
        status = int(status_line.group(2))
        if status == 101:
            raise MalformedResponse("unexpected 101 Switching Protocols")
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):  # obsolete line folding: part of the previous value
                if not headers:
                    raise MalformedResponse("continuation line at start of headers")
                name, value = headers[-1]
                headers[-1] = (name, value + b" " + line.strip(b" \t"))
                continue
            field = _HEADER_FIELD.fullmatch(line)
            if field is None:
                raise MalformedResponse(f"illegal header line: {line[:80]!r}")
            headers.append((field.group(1), field.group(2)))
        length: bytes | None = None
        chunked = False
        close = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                values = {v.strip() for v in value.split(b",")}
                if len(values) != 1 or (length is not None and values != {length}):
                    raise MalformedResponse("conflicting Content-Length headers")
                length = values.pop()
                if not _CONTENT_LENGTH.fullmatch(length):
                    raise MalformedResponse(f"bad Content-Length: {value[:40]!r}")
            elif lname == b"transfer-encoding":
                if chunked:
                    raise MalformedResponse("multiple Transfer-Encoding headers")
                if value.lower() != b"chunked":
                    raise MalformedResponse(
                        f"unsupported Transfer-Encoding: {value[:40]!r} (only chunked)"
                    )
                chunked = True
            elif lname == b"connection":
                close = close or b"close" in [v.strip().lower() for v in value.split(b",")]
        if status < 200:
            return  # interim response (100 Continue, 103 Early Hints): the final one follows
        self.status = status
        self.headers = headers
        self.keep_alive = not close and status_line.group(1) >= b"1.1"
        if status in (204, 304):
            self.state = DONE
        elif chunked:
            self.state = _SIZE
        elif length is not None:
            n = int(length)
            self.state, self.remaining = (_LENGTH, n) if n else (DONE, 0)
        else:
            self.state = _CLOSE
            self.keep_alive = False
        self.head_done = True

    def _parse_body(self) -> None:
        buf = self._buf
        while buf:
            st = self.state
            if st in (_LENGTH, _CLOSE):
                take = len(buf) if st == _CLOSE else min(self.remaining, len(buf))
                self.chunks.append(bytes(buf[:take]))
                del buf[:take]
                if st == _LENGTH:
                    self.remaining -= take
                    if self.remaining == 0:
                        self.state = DONE
            elif st == _SIZE:
                idx = buf.find(b"\r\n")
                if idx < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise MalformedResponse("chunk header too long")
                    return
                header = _CHUNK_HEADER.fullmatch(buf, 0, idx)
                if header is None:
                    raise MalformedResponse(f"illegal chunk header: {bytes(buf[:idx])[:80]!r}")
                size = int(header.group(1), 16)
                del buf[: idx + 2]
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.state, self.remaining = _DATA, size
            elif st == _DATA:
                take = min(self.remaining, len(buf))
                self.chunks.append(bytes(buf[:take]))
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _DATA_CRLF
            elif st == _DATA_CRLF:
                if buf[:1] != b"\r" or (len(buf) > 1 and buf[1:2] != b"\n"):
                    raise MalformedResponse(f"malformed chunk footer: {bytes(buf[:2])!r}")
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = _SIZE
            elif st == _TRAILER:
                idx = buf.find(b"\n")
                if idx < 0:
                    return
                line = bytes(buf[:idx]).rstrip(b"\r")
                del buf[: idx + 1]
                if not line:
                    self.state = DONE
            else:  # DONE: bytes after a complete response (the server broke protocol)
                self.keep_alive = False
                buf.clear()

    async def wait(self, timeout: float | None) -> None:
        """Wait for more data (or the end); raise ``httpx.ReadTimeout`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        handle = None
        if timeout is not None:
            handle = loop.call_later(timeout, _timeout, self._waiter)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def protocol_error(error: BaseException) -> httpx.RemoteProtocolError:
    if isinstance(error, MalformedResponse):
        return error
    return httpx.RemoteProtocolError(f"server disconnected: {error}")


def _timeout(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(httpx.ReadTimeout("no data within the read timeout"))
