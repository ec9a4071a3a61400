"""A lean HTTP/1.1 transport for httpx on asyncio protocols (I/O).

Why: measured on this machine (docs/benchmarks.md), httpx's default transport (httpcore)
spends most of its time in connection-pool bookkeeping that grows with the number of open
connections, and caps a 64-connection streamed load at about 450 requests/s on one core; the
``httpx-aiohttp`` transport reaches about 1,100. This transport keeps the httpx API (requests,
responses, timeouts, exceptions) and does only what a load generator on plain HTTP needs: keep-
alive connections per host, ``Content-Length``/chunked/until-close bodies, a read timeout per
wait, a connect timeout. ``https://`` URLs are delegated to httpx's default transport, its pool
sized like the load's concurrency. Every transport asks for ``Accept-Encoding: identity``: the
client reads raw bytes, and a compressing proxy would otherwise turn every stream into gzip.

:class:`LeanClient` adds :meth:`LeanClient.stream_post`, the load's hot path: the request head
(the bytes httpx would send for that path) is built once per path, and a request skips httpx's
per-request machinery (URL merging, header merging, cookies, auth, redirects, event hooks,
``httpx.Response``), which measured as about 40 % of the client's time per request on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _LENGTH, _CLOSE, _DONE = range(7)

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


class _Conn(asyncio.Protocol):
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
        self.state = _DONE
        self.remaining = 0
        self.keep_alive = True
        self.got_bytes = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.error is None:
            if self.state == _CLOSE:
                self.state = _DONE
            elif self.state != _DONE or not self.head_done:
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
            self.state = _DONE
        elif chunked:
            self.state = _SIZE
        elif length is not None:
            n = int(length)
            self.state, self.remaining = (_LENGTH, n) if n else (_DONE, 0)
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
                        self.state = _DONE
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
                    self.state = _DONE
            else:  # _DONE: bytes after a complete response (the server broke protocol)
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


def _protocol_error(error: BaseException) -> httpx.RemoteProtocolError:
    if isinstance(error, MalformedResponse):
        return error
    return httpx.RemoteProtocolError(f"server disconnected: {error}")


def _timeout(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(httpx.ReadTimeout("no data within the read timeout"))


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, pool: LeanTransport, key: tuple[str, int], conn: _Conn, read_timeout: float | None
    ) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn
        self._timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        chunks = conn.chunks
        while True:
            if chunks:
                # Everything that arrived together is handed over as one part: the consumer
                # stamps one arrival time per part, and these bytes did arrive at one time.
                if len(chunks) == 1:
                    yield chunks.popleft()
                else:
                    part = b"".join(chunks)
                    chunks.clear()
                    yield part
                continue
            if conn.state == _DONE:
                break
            if conn.error is not None:
                raise _protocol_error(conn.error)
            await conn.wait(self._timeout)
        self._done = True

    async def aclose(self) -> None:
        conn = self._conn
        if (
            self._done
            and conn.state == _DONE
            and conn.keep_alive
            and not conn.closed
            and not conn._buf
        ):
            self._pool._release(self._key, conn)
        else:
            conn.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 keep-alive transport; see the module docstring.

    ``limits`` sizes the pool of the httpx transport that serves ``https://`` URLs (httpx's
    default, 20 kept alive and 100 at most, would redo TLS handshakes above 20 requests in
    flight and queue above 100); plain-HTTP connections are opened as needed and all kept.
    """

    def __init__(self, limits: httpx.Limits | None = None) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None
        self.limits = limits or httpx.Limits(max_connections=None, max_keepalive_connections=None)

    def fallback(self) -> httpx.AsyncHTTPTransport:
        """The httpx transport for ``https://`` (created on first use, sized by ``limits``)."""
        if self._fallback is None:
            self._fallback = httpx.AsyncHTTPTransport(limits=self.limits, retries=0)
        return self._fallback

    def _release(self, key: tuple[str, int], conn: _Conn) -> None:
        conn._reset()
        self._idle.setdefault(key, []).append(conn)

    async def _connect(self, host: str, port: int, timeout: float | None) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(loop.create_connection(_Conn, host, port), timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return proto

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            return await self.fallback().handle_async_request(request)
        host = url.host
        port = url.port or 80
        key = (host, port)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        body = request.content  # the load client always sends a complete body
        target = url.raw_path.decode("ascii")
        head = [f"{request.method} {target} HTTP/1.1\r\n".encode()]
        for name, value in request.headers.raw:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"\r\n")
        payload = b"".join(head) + body
        conn = await self.open(host, port, payload, timeouts.get("connect"), timeouts.get("read"))
        return httpx.Response(
            status_code=conn.status,
            headers=conn.headers,
            stream=_Body(self, key, conn, timeouts.get("read")),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def open(
        self,
        host: str,
        port: int,
        payload: bytes,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> _Conn:
        """Send ``payload`` (a whole request) on an idle or new connection; return the
        connection once the response head has arrived."""
        key = (host, port)
        for attempt in range(2):
            idle = self._idle.get(key)
            reused = False
            conn: _Conn | None = None
            while idle:
                candidate = idle.pop()
                if not candidate.closed:
                    conn, reused = candidate, True
                    break
            if conn is None:
                conn = await self._connect(host, port, connect_timeout)
            assert conn.transport is not None
            conn.transport.write(payload)
            try:
                while not conn.head_done:
                    if conn.error is not None:
                        raise _protocol_error(conn.error)
                    await conn.wait(read_timeout)
            except httpx.RemoteProtocolError:
                conn.close()
                # A keep-alive connection the server had already closed: retry once, fresh.
                if reused and not conn.got_bytes and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return conn
        raise httpx.RemoteProtocolError("server disconnected")  # pragma: no cover

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        if self._fallback is not None:
            with contextlib.suppress(Exception):
                await self._fallback.aclose()


class LeanHeaders:
    """Response headers as the server sent them; ``get`` is case-insensitive."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self.raw:
            if k.lower() == key:
                return v.decode("latin-1")
        return default


class LeanResponse:
    """The parts of ``httpx.Response`` the load client reads: status, headers, raw body."""

    __slots__ = ("_body", "headers", "status_code")

    def __init__(self, conn: _Conn, body: _Body) -> None:
        self.status_code = conn.status
        self.headers = LeanHeaders(conn.headers)
        self._body = body

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked framing removed, no content decoding)."""
        return self._body.__aiter__()

    async def aread(self) -> bytes:
        return b"".join([part async for part in self._body])


class _LeanStream:
    """``async with client.stream_post(...) as resp``: send, wait for the head, release the
    connection (or close it, if the body was not read to the end) on exit."""

    __slots__ = ("_body", "_client", "_content", "_path")

    def __init__(self, client: LeanClient, path: str, content: bytes) -> None:
        self._client = client
        self._path = path
        self._content = content
        self._body: _Body | None = None

    async def __aenter__(self) -> LeanResponse:
        c = self._client
        host, port, head = c._head(self._path)
        timeout = c.timeout
        payload = head + b"%d\r\n\r\n" % len(self._content) + self._content
        conn = await c._lean.open(host, port, payload, timeout.connect, timeout.read)
        self._body = _Body(c._lean, (host, port), conn, timeout.read)
        return LeanResponse(conn, self._body)

    async def __aexit__(self, *exc: object) -> None:
        if self._body is not None:
            await self._body.aclose()


class LeanClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` on :class:`LeanTransport` with the :meth:`stream_post` shortcut
    (plain ``http://`` base URLs only; see :meth:`lean_for`)."""

    def __init__(self, **kwargs: Any) -> None:
        self._lean = LeanTransport(kwargs.pop("limits", None))
        # The body is read raw (no content decoding): ask for it uncompressed.
        headers = httpx.Headers(kwargs.pop("headers", None))
        headers.setdefault("accept-encoding", "identity")
        super().__init__(transport=self._lean, headers=headers, **kwargs)
        self._heads: dict[str, tuple[str, int, bytes]] = {}

    def lean_for(self, path: str) -> bool:
        """Whether :meth:`stream_post` serves ``path``: plain HTTP and no cookies to send
        (the shortcut neither sends nor stores cookies)."""
        if self.cookies:
            return False
        try:
            self._head(path)
        except _NotLean:
            return False
        return True

    def _head(self, path: str) -> tuple[str, int, bytes]:
        cached = self._heads.get(path)
        if cached is None:
            # The bytes httpx would send for this path, up to the content-length value.
            req = self.build_request("POST", path, content=b"")
            url = req.url
            if url.scheme != "http":
                raise _NotLean(path)
            lines = [f"POST {url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode()]
            for name, value in req.headers.raw:
                if name.lower() != b"content-length":
                    lines.append(name + b": " + value + b"\r\n")
            lines.append(b"Content-Length: ")
            cached = self._heads[path] = (url.host, url.port or 80, b"".join(lines))
        return cached

    def stream_post(self, path: str, content: bytes) -> _LeanStream:
        """``POST path`` with ``content`` (its headers are the client's), streamed response."""
        return _LeanStream(self, path, content)


class _NotLean(Exception):
    pass
