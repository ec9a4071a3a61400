"""A lean HTTP/1.1 transport for httpx on asyncio protocols (I/O).

Why: measured on this machine (docs/benchmarks.md), httpx's default transport (httpcore)
spends most of its time in connection-pool bookkeeping that grows with the number of open
connections, and caps a 64-connection streamed load at about 450 requests/s on one core; the
``httpx-aiohttp`` transport reaches about 1,100. This transport keeps the httpx API (requests,
responses, timeouts, exceptions) and does only what a load generator on plain HTTP needs: keep-
alive connections per host, ``Content-Length``/chunked/until-close bodies, a read timeout per
wait, a connect timeout. ``https://`` URLs are delegated to httpx's default transport.

:class:`LeanClient` adds :meth:`LeanClient.stream_post`, the load's hot path: the request head
(the bytes httpx would send for that path) is built once per path, and a request skips httpx's
per-request machinery (URL merging, header merging, cookies, auth, redirects, event hooks,
``httpx.Response``), which measured as about 40 % of the client's time per request on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _LENGTH, _CLOSE, _DONE = range(7)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

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
        if self.state == _CLOSE:
            self.state = _DONE
        elif self.state != _DONE or not self.head_done:
            self.error = exc or ConnectionResetError("server closed the connection")
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._buf += data
        if not self.head_done:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        self._parse_body()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        self.status = int(parts[1])
        version = parts[0]
        length: int | None = None
        chunked = False
        conn_hdr = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            value = value.strip()
            self.headers.append((name.strip(), value))
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif lname == b"connection":
                conn_hdr = value.lower()
        self.keep_alive = conn_hdr != b"close" and version == b"HTTP/1.1"
        if chunked:
            self.state = _SIZE
        elif length is not None:
            self.state, self.remaining = (_LENGTH, length) if length else (_DONE, 0)
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self.state = _DONE
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
                    return
                size = int(bytes(buf[:idx]).split(b";", 1)[0], 16)
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
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = _SIZE
            elif st == _TRAILER:
                idx = buf.find(b"\r\n")
                if idx < 0:
                    return
                line = bytes(buf[:idx])
                del buf[: idx + 2]
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
                raise httpx.RemoteProtocolError(f"server disconnected: {conn.error}")
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
    """Plain-HTTP/1.1 keep-alive transport; see the module docstring."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None

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
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
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
                        raise httpx.RemoteProtocolError(f"server disconnected: {conn.error}")
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
        self._lean = LeanTransport()
        super().__init__(transport=self._lean, **kwargs)
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
