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
from collections.abc import AsyncIterator
from typing import Any

import httpx

from harness.load.http1 import DONE, Connection, MalformedResponse, protocol_error

__all__ = ["LeanClient", "LeanResponse", "LeanTransport", "MalformedResponse"]


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        pool: LeanTransport,
        key: tuple[str, int],
        conn: Connection,
        read_timeout: float | None,
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
            if conn.state == DONE:
                break
            if conn.error is not None:
                raise protocol_error(conn.error)
            await conn.wait(self._timeout)
        self._done = True

    async def aclose(self) -> None:
        conn = self._conn
        if (
            self._done
            and conn.state == DONE
            and conn.keep_alive
            and not conn.closed
            and not conn.buffered
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
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None
        self.limits = limits or httpx.Limits(max_connections=None, max_keepalive_connections=None)

    def fallback(self) -> httpx.AsyncHTTPTransport:
        """The httpx transport for ``https://`` (created on first use, sized by ``limits``)."""
        if self._fallback is None:
            self._fallback = httpx.AsyncHTTPTransport(limits=self.limits, retries=0)
        return self._fallback

    def _release(self, key: tuple[str, int], conn: Connection) -> None:
        conn._reset()
        self._idle.setdefault(key, []).append(conn)

    async def _connect(self, host: str, port: int, timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(Connection, host, port), timeout
            )
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
    ) -> Connection:
        """Send ``payload`` (a whole request) on an idle or new connection; return the
        connection once the response head has arrived."""
        key = (host, port)
        for attempt in range(2):
            idle = self._idle.get(key)
            reused = False
            conn: Connection | None = None
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
                        raise protocol_error(conn.error)
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

    def __init__(self, conn: Connection, body: _Body) -> None:
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
