"""The async HTTP client: send one planned request, measure it, never hang (I/O).

Two clocks bound every request: a token-stall timeout (no new token for ``stall_after_s``,
counted from the send for the first token; enforced both by httpx's read timeout, which fires
when no byte arrives, and by a check on each chunk, which catches a server that keeps the
connection busy without tokens) and a total deadline (``deadline_s``). Either ends the request
as ``stalled`` with the time of its last token; the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from harness.errors import EnvironmentProblem
from harness.load.factory import PlannedRequest
from harness.load.sse import SSEDecoder, SSEMode, StreamAccount, error_from_body
from harness.load.tokenizer import model_dir_from_models_listing
from harness.load.transport import LeanClient, LeanResponse, MalformedResponse

Status = Literal["ok", "failed", "stalled", "aborted"]

#: Cap on how much of an error body is read (a misbehaving server must not exhaust memory).
_MAX_ERROR_BODY = 64 * 1024


@dataclass
class InFlight:
    """A request on the wire; what the watchdog writes to ``inflight.jsonl`` in an incident."""

    planned: PlannedRequest
    scheduled_s: float | None
    sent_at: float  # unix time
    sent_perf: float  # perf_counter at send
    account: StreamAccount = field(default_factory=StreamAccount)
    #: The request body exactly as sent (JSON bytes); set by :func:`send_request`.
    content: bytes | None = None

    def to_dict(self, now_perf: float | None = None) -> dict[str, Any]:
        now = time.perf_counter() if now_perf is None else now_perf
        acc = self.account
        last = acc.last_token
        return {
            "index": self.planned.index,
            "path": self.planned.path,
            "body": self.planned.body,
            "sent_at": round(self.sent_at, 6),
            "age_s": round(now - self.sent_perf, 3),
            "request_id": acc.request_id,
            "tokens_so_far": acc.token_chunks,
            "last_token_at": None
            if last is None
            else round(self.sent_at + last - self.sent_perf, 6),
            "since_last_token_s": round(now - (last if last is not None else self.sent_perf), 3),
        }


def client_timeouts(stall_after_s: float, connect_s: float = 10.0) -> httpx.Timeout:
    """httpx timeouts: ``read`` is the token-stall clock (no byte for that long)."""
    return httpx.Timeout(connect=connect_s, read=stall_after_s, write=30.0, pool=None)


def make_client(
    base_url: str,
    *,
    stall_after_s: float,
    max_connections: int | None,
    transport: str = "lean",
    api_key: str | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for the run. ``transport``: ``lean`` (harness's own, the
    fastest; see :mod:`harness.load.transport`), ``httpx`` (httpcore) or ``aiohttp``
    (the ``httpx-aiohttp`` package). ``api_key``: sent as a bearer token, as OpenAI clients
    and ``vllm bench serve`` do."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections or 1024
    )
    kwargs: dict[str, Any] = {
        "base_url": base_url,
        "timeout": client_timeouts(stall_after_s),
        "limits": limits,
        # The client reads the raw body: ask for it uncompressed (a compressing proxy would
        # otherwise gzip every stream); a server that compresses anyway is decoded.
        "headers": {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "accept-encoding": "identity",
        },
        "trust_env": False,
    }
    if api_key:
        kwargs["headers"]["authorization"] = f"Bearer {api_key}"
    if transport == "aiohttp":
        try:
            import aiohttp
            from httpx_aiohttp import AiohttpTransport  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            from harness.errors import EnvironmentProblem

            raise EnvironmentProblem(
                "--http aiohttp needs the httpx-aiohttp package", hint="pip install httpx-aiohttp"
            ) from exc

        def session() -> Any:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_connections or 0))

        kwargs["transport"] = AiohttpTransport(client=session)
    elif transport == "lean":
        return LeanClient(**kwargs)
    else:
        kwargs["transport"] = httpx.AsyncHTTPTransport(limits=limits, retries=0)
    return httpx.AsyncClient(**kwargs)


async def served_model(
    client: httpx.AsyncClient, base_url: str, *, need_name: bool = True
) -> tuple[str | None, str | None]:
    """The server's first model name and its local directory (``root``, when the listing has
    one) from ``GET /v1/models``. :class:`EnvironmentProblem` when the server cannot be
    reached, or names no model and ``need_name``."""
    try:
        resp = await client.get("/v1/models", timeout=30.0)
    except httpx.HTTPError as exc:
        raise EnvironmentProblem(
            f"cannot reach {base_url}/v1/models: {type(exc).__name__}: {exc}",
            hint="is the server up? (give --model to skip this check)",
        ) from None
    name: str | None = None
    root: str | None = None
    if resp.status_code == 200:
        root = model_dir_from_models_listing(resp.content)
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            name = str(resp.json()["data"][0]["id"])
    if name is None and need_name:
        raise EnvironmentProblem(
            f"{base_url}/v1/models did not name a model (HTTP {resp.status_code})",
            hint="give --model NAME",
        )
    return name, root


async def send_request(
    client: httpx.AsyncClient,
    flight: InFlight,
    *,
    stall_after_s: float,
    deadline_s: float,
    sse_mode: SSEMode = "lean",
) -> dict[str, Any]:
    """Send ``flight.planned`` and return its record (the requests.jsonl line, minus run
    offsets the runner adds). Never raises for anything the server or network does."""
    planned = flight.planned
    acc = flight.account
    acc.mode = sse_mode
    status: Status = "ok"
    error: str | None = None
    detail: str | None = None
    http_status: int | None = None
    header_id: str | None = None
    content = json.dumps(planned.body, separators=(",", ":")).encode()
    flight.content = content
    t0 = time.perf_counter()
    flight.sent_perf = t0
    flight.sent_at = time.time()
    acc.started = t0
    try:
        async with asyncio.timeout(deadline_s):
            resp: httpx.Response | LeanResponse
            async with (
                client.stream_post(planned.path, content)
                if isinstance(client, LeanClient) and client.lean_for(planned.path)
                else client.stream("POST", planned.path, content=content)
            ) as resp:
                http_status = resp.status_code
                header_id = resp.headers.get("x-request-id")
                inflate = _inflater(resp.headers.get("content-encoding"))
                if http_status != 200:
                    body = b""
                    async for part in resp.aiter_raw():
                        body += part
                        if len(body) > _MAX_ERROR_BODY:
                            break
                    with contextlib.suppress(zlib.error):
                        body = inflate(body) if inflate is not None else body
                    kind, detail = error_from_body(body)
                    status, error = "failed", f"http_{http_status}" + (f":{kind}" if kind else "")
                elif planned.stream:
                    decoder = SSEDecoder()
                    async for part in resp.aiter_raw():
                        now = time.perf_counter()
                        if inflate is not None:
                            part = inflate(part)
                        for payload in decoder.feed(part):
                            acc.on_event(payload, now)
                        since = now - (acc.last_token if acc.last_token is not None else t0)
                        if since > stall_after_s:
                            status, error = "stalled", "token_stall"
                            break
                    else:
                        for payload in decoder.close():
                            acc.on_event(payload, time.perf_counter())
                        if acc.error is not None:
                            status, error, detail = "failed", "stream_error", acc.error
                        elif acc.first_token is None:
                            status, error = "failed", "no_tokens"
                        elif not acc.done and acc.finish_reason is None:
                            status, error = "failed", "truncated_stream"
                else:
                    body = await resp.aread()
                    now = time.perf_counter()
                    if inflate is not None:
                        body = inflate(body)
                    _absorb_plain(acc, body, now)
                    if acc.error is not None:
                        status, error, detail = "failed", "bad_body", acc.error
    except TimeoutError:
        status, error = "stalled", "deadline"
    except UnsupportedEncoding as exc:
        status, error, detail = "failed", "content_encoding", str(exc)
    except zlib.error as exc:
        status, error, detail = "failed", "content_encoding", f"cannot decode the body: {exc}"
    except MalformedResponse as exc:
        status, error, detail = "failed", "protocol_error", str(exc)[:300]
    except (httpx.ReadTimeout, httpx.PoolTimeout):
        status, error = "stalled", "token_stall"
    except httpx.ConnectTimeout:
        status, error = "failed", "connect_timeout"
    except httpx.ConnectError as exc:
        status, error, detail = "failed", "connect_error", str(exc)[:300]
    except httpx.RemoteProtocolError as exc:
        status, error, detail = "failed", "server_disconnected", str(exc)[:300]
    except httpx.HTTPError as exc:
        status, error, detail = "failed", type(exc).__name__, str(exc)[:300]
    except OSError as exc:
        status, error, detail = "failed", "os_error", str(exc)[:300]
    except asyncio.CancelledError:
        status, error = "aborted", "cancelled"
        return _record(flight, status, error, detail, http_status, header_id, time.perf_counter())
    return _record(flight, status, error, detail, http_status, header_id, time.perf_counter())


class UnsupportedEncoding(Exception):
    """The server compressed the body with an encoding the client cannot decode."""


def _inflater(encoding: str | None) -> Callable[[bytes], bytes] | None:
    """A streaming decoder for a ``Content-Encoding`` the server used although the client asked
    for ``identity`` (some proxies ignore it); None when the body is not encoded."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip", "deflate"):
        # 32 + MAX_WBITS: a gzip or zlib header, detected from the first bytes.
        return zlib.decompressobj(32 + zlib.MAX_WBITS).decompress
    raise UnsupportedEncoding(f"the server sent Content-Encoding: {name} (asked for identity)")


def _absorb_plain(acc: StreamAccount, body: bytes, now: float) -> None:
    try:
        obj = json.loads(body)
    except ValueError:
        acc.error = "response is not JSON"
        return
    if not isinstance(obj, dict):
        acc.error = "response is not a JSON object"
        return
    if isinstance(obj.get("id"), str):
        acc.request_id = obj["id"]
    if isinstance(obj.get("usage"), dict):
        acc.usage = obj["usage"]
    acc.first_token = acc.last_token = now
    acc.token_chunks = 1
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason"):
            acc.finish_reason = str(choice["finish_reason"])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _record(
    flight: InFlight,
    status: Status,
    error: str | None,
    detail: str | None,
    http_status: int | None,
    header_id: str | None,
    end: float,
) -> dict[str, Any]:
    acc = flight.account
    planned = flight.planned
    t0 = flight.sent_perf
    ttft = None if acc.first_token is None else acc.first_token - t0
    out_tokens = acc.output_tokens
    e2e: float | None = None
    tpot: float | None = None
    if status == "ok":
        # The request ends at its last token (the trailing usage chunk carries none).
        e2e = (acc.last_token if acc.last_token is not None else end) - t0
        if ttft is not None and out_tokens > 1:
            tpot = (e2e - ttft) / (out_tokens - 1)
    last_token_at = None if acc.last_token is None else flight.sent_at + (acc.last_token - t0)
    rec: dict[str, Any] = {
        "index": planned.index,
        "status": status,
        "error": error,
        "error_detail": detail,
        "http_status": http_status,
        "request_id": acc.request_id or header_id,
        "sent_at": round(flight.sent_at, 6),
        "ttft_ms": _ms(ttft),
        "tpot_ms": _ms(tpot),
        "e2e_ms": _ms(e2e),
        "duration_ms": _ms(end - t0),
        "itl_ms": [round(x * 1000.0, 3) for x in acc.itl],
        "prompt_tokens": acc.prompt_tokens
        if acc.prompt_tokens is not None
        else planned.prompt_tokens,
        "prompt_tokens_planned": planned.prompt_tokens,
        "output_tokens": out_tokens,
        "max_tokens": planned.max_tokens,
        "finish_reason": acc.finish_reason,
        "last_token_at": None if last_token_at is None else round(last_token_at, 6),
        "path": planned.path,
    }
    if planned.images:
        rec["images"] = [
            {"width": i.sent_width, "height": i.sent_height, "format": i.format, "bytes": i.bytes}
            | (
                {"requested": [i.width, i.height]}
                if (i.width, i.height) != (i.sent_width, i.sent_height)
                else {}
            )
            for i in planned.images
        ]
    return rec
