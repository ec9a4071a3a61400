"""The load client's HTTP against small real servers on 127.0.0.1: content encodings, interim
responses, malformed framing and the https pool (every transport where it applies)."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from harness.load.client import InFlight, make_client, send_request
from harness.load.factory import PlannedRequest
from tests.conftest import have_module, require

pytestmark = pytest.mark.integration

TRANSPORTS = ["lean", "httpx", "aiohttp"]

Handler = Callable[[dict[bytes, bytes], asyncio.StreamWriter], Awaitable[None]]


def sse_events(tokens: int = 3) -> list[bytes]:
    """An OpenAI completions stream of ``tokens`` tokens, usage and [DONE]."""
    events = [
        b'data: {"id":"cmpl-t","choices":[{"index":0,"text":"w%d","finish_reason":null}]}\n\n' % i
        for i in range(tokens)
    ]
    events.append(
        b'data: {"id":"cmpl-t","choices":[{"index":0,"text":"","finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":2,"completion_tokens":%d,"total_tokens":%d}}\n\n'
        % (tokens, tokens + 2)
    )
    events.append(b"data: [DONE]\n\n")
    return events


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


@asynccontextmanager
async def http_server(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[dict[bytes, bytes]], list[int]]]:
    """A keep-alive HTTP/1.1 server: ``handler(request headers, writer)`` answers each request.
    Yields the base URL, the headers of every request and the count of accepted connections."""
    seen: list[dict[bytes, bytes]] = []
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get(b"content-length", b"0")))
                seen.append(headers)
                await handler(headers, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", seen, accepted
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)


def planned(index: int = 0) -> PlannedRequest:
    body = {"model": "m", "prompt": "a b", "max_tokens": 3, "stream": True}
    return PlannedRequest(
        index=index, path="/v1/completions", body=body, prompt_tokens=2, max_tokens=3
    )


async def one_request(url: str, transport: str, index: int = 0, **kw: Any) -> dict[str, Any]:
    client = make_client(
        url, stall_after_s=10, max_connections=kw.pop("max_connections", 4), transport=transport
    )
    try:
        flight = InFlight(planned=planned(index), scheduled_s=None, sent_at=0.0, sent_perf=0.0)
        return await send_request(client, flight, stall_after_s=10, deadline_s=30)
    finally:
        await client.aclose()


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(bounded())


def gzip_stream(events: list[bytes]) -> list[bytes]:
    """The events gzip-compressed as one stream, flushed per event (as a proxy does)."""
    comp = zlib.compressobj(wbits=31)
    parts = [comp.compress(e) + comp.flush(zlib.Z_SYNC_FLUSH) for e in events]
    parts.append(comp.flush())
    return parts


async def compress_if_asked(headers: dict[bytes, bytes], writer: asyncio.StreamWriter) -> None:
    """A compressing proxy: gzip whenever the client accepts it."""
    accepts = headers.get(b"accept-encoding", b"")
    if b"gzip" in accepts:
        head = b"Content-Encoding: gzip\r\n"
        parts = gzip_stream(sse_events())
    else:
        head, parts = b"", sse_events()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        + head
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + chunked(parts)
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_compressing_proxy_gets_asked_for_identity(transport: str) -> None:
    if transport == "aiohttp":
        require(have_module("httpx_aiohttp"), "httpx-aiohttp (the dev extra installs it)")

    async def main() -> tuple[dict[str, Any], list[dict[bytes, bytes]]]:
        async with http_server(compress_if_asked) as (url, seen, _):
            return await one_request(url, transport), seen

    rec, seen = run(main())
    assert [h.get(b"accept-encoding") for h in seen] == [b"identity"]
    assert rec["status"] == "ok" and rec["output_tokens"] == 3, rec


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_that_compresses_anyway_is_decoded(transport: str, encoding: str) -> None:
    if transport == "aiohttp":
        require(have_module("httpx_aiohttp"), "httpx-aiohttp (the dev extra installs it)")

    async def always(headers: dict[bytes, bytes], writer: asyncio.StreamWriter) -> None:
        if encoding == "gzip":
            parts = gzip_stream(sse_events())
        else:
            parts = [zlib.compress(b"".join(sse_events()))]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: %s\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%s" % (encoding.encode(), chunked(parts))
        )

    async def main() -> dict[str, Any]:
        async with http_server(always) as (url, _, _):
            return await one_request(url, transport)

    rec = run(main())
    assert rec["status"] == "ok" and rec["output_tokens"] == 3 and rec["finish_reason"] == "length"


def test_an_error_body_and_an_unknown_encoding() -> None:
    error = json.dumps({"error": {"type": "BadRequestError", "message": "too long"}}).encode()

    async def gz_error(headers: dict[bytes, bytes], writer: asyncio.StreamWriter) -> None:
        body = gzip.compress(error)
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )

    async def brotli(headers: dict[bytes, bytes], writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked([b"\x0b\x02\x80"])
        )

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with http_server(gz_error) as (url, _, _):
            first = await one_request(url, "lean")
        async with http_server(brotli) as (url, _, _):
            second = await one_request(url, "lean")
        return first, second

    first, second = run(main())
    assert first["error"] == "http_400:BadRequestError" and first["error_detail"] == "too long"
    assert second["status"] == "failed" and second["error"] == "content_encoding"
    assert "br" in second["error_detail"]


def test_interim_100_continue_and_conflicting_lengths_over_a_socket() -> None:
    async def continue_first(headers: dict[bytes, bytes], writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(sse_events())
        )

    async def conflicting(headers: dict[bytes, bytes], writer: asyncio.StreamWriter) -> None:
        body = b"".join(sse_events())
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), len(body) - 7, body)
        )

    async def main() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with http_server(continue_first) as (url, _, _):
            ok = [await one_request(url, t) for t in ("lean", "httpx")]
        async with http_server(conflicting) as (url, _, _):
            bad = await one_request(url, "lean")
        return ok, bad

    ok, bad = run(main())
    for rec in ok:
        assert rec["status"] == "ok" and rec["http_status"] == 200 and rec["output_tokens"] == 3
    assert bad["status"] == "failed" and bad["error"] == "protocol_error"
    assert "conflicting Content-Length" in bad["error_detail"]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    require(shutil.which("openssl") is not None, "openssl (to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_https_pool_keeps_a_connection_per_request_in_flight(
    tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 requests in flight, twice: httpx's default pool keeps 20 connections alive, so the
    second round would open 10 new ones (10 more TLS handshakes in TTFT); sized from the
    concurrency, the second round reuses all 30."""
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx's transport trusts it
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    concurrency = 30
    waiting: list[asyncio.Event] = []
    released = asyncio.Event()

    async def together(headers: dict[bytes, bytes], writer: asyncio.StreamWriter) -> None:
        # Answer only once every request of the round is in: all 30 are in flight at once.
        waiting.append(asyncio.Event())
        if len(waiting) % concurrency == 0:
            released.set()
        await asyncio.wait_for(released.wait(), 60)
        body = b"".join(sse_events())
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )

    async def main() -> tuple[list[dict[str, Any]], int]:
        async with http_server(together, tls) as (url, _, accepted):
            client = make_client(url, stall_after_s=30, max_connections=concurrency)
            try:
                records = []
                for round_ in range(2):
                    released.clear()
                    flights = [
                        InFlight(
                            planned=planned(round_ * concurrency + i),
                            scheduled_s=None,
                            sent_at=0.0,
                            sent_perf=0.0,
                        )
                        for i in range(concurrency)
                    ]
                    records += await asyncio.gather(
                        *(send_request(client, f, stall_after_s=30, deadline_s=60) for f in flights)
                    )
            finally:
                await client.aclose()
            return records, accepted[0]

    records, connections = run(main())
    assert [r["status"] for r in records] == ["ok"] * 2 * concurrency, records[:2]
    assert connections == concurrency
