"""The lean transport's HTTP/1.1 response parser, with h11 (httpx's own parser) as the oracle.

Each response is fed to a :class:`harness.load.http1.Connection` (the parser, without a socket)
in arbitrary pieces, and to an ``h11.Connection`` in client role: both must agree on the
status, headers, body and keep-alive, or both must refuse the response.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import h11
import pytest

from harness.load.http1 import Connection as _Conn
from harness.load.transport import LeanClient, LeanTransport, MalformedResponse
from tests.conftest import have_module, require


@dataclass
class Parsed:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool
    keep_alive: bool


def lean(data: bytes, cuts: list[int] | None = None, *, eof: bool = True) -> Parsed | str:
    """Feed ``data`` (split at ``cuts``) to the lean parser; the error message if it refuses."""
    conn = _Conn()
    points = [0, *sorted(cuts or []), len(data)]
    for a, b in itertools.pairwise(points):
        if a < b:
            conn.data_received(data[a:b])
    if eof and not isinstance(conn.error, MalformedResponse):
        conn.connection_lost(None)
    if isinstance(conn.error, MalformedResponse):
        return str(conn.error)
    body = b"".join(conn.chunks)
    complete = conn.head_done and conn.state == 6 and conn.error is None  # _DONE
    return Parsed(conn.status, conn.headers, body, complete, conn.keep_alive)


def oracle(data: bytes, *, eof: bool = True) -> Parsed | str:
    """What h11 makes of the same bytes, as the response to a POST."""
    client = h11.Connection(our_role=h11.CLIENT)
    client.send(
        h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")])
    )
    client.send(h11.EndOfMessage())
    status, headers, body = 0, [], b""
    try:
        client.receive_data(data)
        for at_eof in (False, True):
            if at_eof:
                if not eof:
                    break
                client.receive_data(b"")
            while True:
                event = client.next_event()
                if event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed):
                    break
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = [(bytes(n), bytes(v)) for n, v in event.headers.raw_items()]
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    # Complete: the connection is reusable when h11 is DONE (not MUST_CLOSE)
                    # and the body did not need the end of the connection.
                    keep_alive = not at_eof and client.their_state is h11.DONE
                    return Parsed(status, headers, body, True, keep_alive)
    except h11.RemoteProtocolError as exc:
        return str(exc)
    return Parsed(status, headers, body, False, False)


def normalized(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers as h11 reports them: names lower-cased, identical Content-Length headers merged
    (left out here), the Transfer-Encoding value lower-cased."""
    out = []
    for name, value in headers:
        name = name.lower()
        if name == b"content-length":
            continue
        out.append((name, value.lower() if name == b"transfer-encoding" else value))
    return out


def same(data: bytes, cuts: list[int] | None = None) -> Parsed:
    ours, theirs = lean(data, cuts), oracle(data)
    assert isinstance(ours, Parsed) == isinstance(theirs, Parsed), (data, ours, theirs)
    assert isinstance(ours, Parsed) and isinstance(theirs, Parsed)
    assert ours.status == theirs.status
    assert normalized(ours.headers) == normalized(theirs.headers)
    assert ours.body == theirs.body
    assert ours.complete == theirs.complete
    if ours.complete:
        assert ours.keep_alive == theirs.keep_alive
    return ours


def refused(data: bytes, cuts: list[int] | None = None) -> str:
    ours, theirs = lean(data, cuts), oracle(data)
    assert isinstance(theirs, str), f"h11 accepts it: {theirs}"
    assert isinstance(ours, str), f"lean accepts it: {ours}"
    return ours


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + chunk(b'data: {"choices":[{}]}\n\n')
    + chunk(b"data: [DONE]\n\n")
    + b"0\r\n\r\n"
)


def test_content_length_and_chunked_bodies() -> None:
    p = same(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert (p.status, p.body, p.complete, p.keep_alive) == (200, b"hello", True, True)
    p = same(SSE)
    assert p.body.endswith(b"data: [DONE]\n\n") and p.complete
    same(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    )
    same(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def test_interim_responses_are_skipped_and_the_final_status_read() -> None:
    p = same(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (p.status, p.body) == (200, b"ok")
    p = same(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        + SSE
    )
    assert p.status == 200 and [n for n, _ in p.headers if n == b"Link"] == []
    # The interim head arrives alone first: the request is not answered yet.
    conn = _Conn()
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert not conn.head_done and conn.error is None
    conn.data_received(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    assert conn.head_done and conn.status == 500


def test_content_length_conflicts_are_refused_as_h11_does() -> None:
    assert "conflicting Content-Length" in refused(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    )
    assert "conflicting Content-Length" in refused(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"
    )
    # The same value twice (or as a list) is one length.
    assert (
        same(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello").body
        == b"hello"
    )
    assert same(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello").body == b"hello"
    for bad in (b"abc", b"-1", b"", b"1" * 21, b"+5"):
        assert "Content-Length" in refused(
            b"HTTP/1.1 200 OK\r\nContent-Length: " + bad + b"\r\n\r\n"
        )


def test_transfer_encoding_rules() -> None:
    # Chunked wins over Content-Length.
    assert (
        same(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        ).body
        == b"ok"
    )
    assert (
        same(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").body
        == b"ok"
    )
    refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_keep_alive_and_bodies_until_close() -> None:
    assert not same(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
    ).keep_alive
    assert not same(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\nx"
    ).keep_alive
    p = same(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert p.body == b"until the end" and not p.keep_alive
    assert not same(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx").keep_alive
    p = same(b"HTTP/1.1 200 OK\r\n\r\nno length")
    assert p.body == b"no length" and not p.keep_alive
    assert same(b"HTTP/1.1 204 No Content\r\n\r\n").complete
    assert same(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").body == b""


def test_lenient_where_h11_is() -> None:
    assert same(b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx").status == 200  # no reason phrase
    assert same(b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx").body == b"x"  # bare LF line ends
    p = same(b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 1\r\n\r\nx")  # obs-fold
    assert (b"X-Long", b"a b") in p.headers
    same(b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaces:  v  \r\nContent-Length: 0\r\n\r\n")
    same(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"FOO 200 OK\r\n\r\n",
        b"HTTP/11 200 OK\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\n continuation first\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXY0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 21 + b"\r\n",
    ],
)
def test_malformed_responses_are_refused(data: bytes) -> None:
    refused(data)
    refused(data, cuts=list(range(1, len(data))))  # byte by byte: same verdict


def test_truncated_bodies_are_not_complete() -> None:
    for data in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ):
        ours = lean(data)
        assert isinstance(ours, Parsed) and not ours.complete
        assert isinstance(oracle(data), str)  # h11: "peer closed connection without ..."


def _random_response(rng: random.Random) -> bytes:
    head = b""
    for _ in range(rng.choice([0, 0, 1, 2])):
        code = rng.choice([100, 102, 103])
        head += (
            b"HTTP/1.1 %d Interim\r\n" % code
            + (b"X-I: 1\r\n" if rng.random() < 0.5 else b"")
            + b"\r\n"
        )
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    status = rng.choice([200, 200, 200, 400, 500, 503])
    reason = rng.choice([b" OK", b"", b" Some Reason"])
    version = rng.choice([b"1.1", b"1.1", b"1.1", b"1.0"])
    headers = [b"Content-Type: text/event-stream"]
    if rng.random() < 0.3:
        headers.append(
            rng.choice(
                [b"Connection: close", b"connection: keep-alive", b"Connection: Upgrade, close"]
            )
        )
    framing = rng.choice(["length", "chunked", "close"])
    if framing == "length":
        headers.append(b"%s: %d" % (rng.choice([b"Content-Length", b"content-length"]), len(body)))
        payload = body
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        payload = b""
        rest = body
        while rest:
            n = rng.randrange(1, 64)
            ext = rng.choice([b"", b";a=b"])
            payload += b"%x%s\r\n" % (len(rest[:n]), ext) + rest[:n] + b"\r\n"
            rest = rest[n:]
        payload += b"0\r\n" + (b"X-Trailer: t\r\n" if rng.random() < 0.3 else b"") + b"\r\n"
    else:
        payload = body
    rng.shuffle(headers)
    sep = b"\n" if rng.random() < 0.1 else b"\r\n"
    final = b"HTTP/" + version + b" %d" % status + reason + sep + sep.join(headers) + sep + sep
    return head + final + payload


def test_random_responses_split_anywhere_agree_with_h11() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        data = _random_response(rng)
        cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randrange(0, 12))))
        same(data, cuts)


def test_bytes_after_a_complete_response_end_keep_alive() -> None:
    conn = _Conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxJUNK")
    assert conn.state == 6 and not conn.keep_alive


@pytest.mark.parametrize("transport", ["lean", "httpx", "aiohttp"])
def test_every_transport_asks_for_an_identity_encoding(transport: str) -> None:
    from harness.load.client import make_client

    if transport == "aiohttp":
        require(have_module("httpx_aiohttp"), "httpx-aiohttp (the dev extra installs it)")
    client = make_client(
        "http://127.0.0.1:1", stall_after_s=1, max_connections=4, transport=transport
    )
    assert client.headers["accept-encoding"] == "identity", transport
    request = client.build_request("POST", "/v1/completions", content=b"{}")
    assert request.headers["accept-encoding"] == "identity"


def test_the_lean_shortcut_head_asks_for_identity() -> None:
    lean_client = LeanClient(base_url="http://127.0.0.1:1")
    _, _, head = lean_client._head("/v1/completions")
    assert b"Accept-Encoding: identity\r\n" in head or b"accept-encoding: identity\r\n" in head


def test_https_fallback_pool_is_sized_by_the_concurrency() -> None:
    from harness.load.client import make_client

    client = make_client("https://example.invalid", stall_after_s=1, max_connections=300)
    assert isinstance(client, LeanClient)
    pool = client._lean.fallback()._pool
    assert pool._max_connections == 300 and pool._max_keepalive_connections == 300
    unbounded = LeanTransport().fallback()._pool
    assert unbounded._max_keepalive_connections > 10**6  # open loop, no cap: keep them all
