"""Publish the load's in-flight requests to ``<run dir>/inflight.json`` (I/O).

The watchdog of ``harness serve`` reads that file when it files an incident and copies the
requests into the incident's ``inflight.jsonl`` (with their exact bodies, so they can be
replayed). Publishing runs next to the load's hot path, so it is built to cost little:

- a task on the load's event loop wakes every ``interval_s`` (0.5 s) and writes only when the
  set of requests changed or tokens arrived since the last write; a hung server, whose requests
  stop changing, costs nothing;
- each body is serialised once, when the request is sent (:attr:`InFlight.content`); the file is
  these bytes spliced into a small JSON envelope, never a re-encoding of every body;
- bodies larger than ``inline_limit`` (images, long contexts) are written once, to
  ``inflight.d/<index>.json``, in a worker thread, and referenced as ``body_file``; the
  reader inlines them;
- every write is atomic (a temporary file, then ``os.replace``), so a reader never sees half a
  file.

Requests that ended as ``stalled`` stay in the file (``"state": "stalled"``) for
``keep_stalled_s``: a stall recorded by the load is itself what makes the watchdog file an
incident, and the incident needs that request's body. At the end of the run both the file and
``inflight.d/`` are removed. The document::

    {"pid": 4242, "host": "node1", "published_at": 1795482583.9,
     "requests": [{"source": "load", "state": "in_flight", "index": 7,
                   "path": "/v1/chat/completions", "sent_at": 1795482581.2,
                   "request_id": "chatcmpl-...", "tokens_so_far": 3,
                   "last_token_at": 1795482581.4, "body": {...}},
                  {..., "body_file": "inflight.d/8.json"}]}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.load.client import InFlight

INFLIGHT_FILE = "inflight.json"
BODIES_DIR = "inflight.d"


@dataclass
class _Ended:
    flight: InFlight
    ended_at: float  # unix time
    expires: float  # time.monotonic()


class InflightPublisher:
    """Keeps ``<run_dir>/inflight.json`` equal to the load's requests in flight.

    ``source()`` returns the runner's live ``{index: InFlight}`` mapping (read on the event loop,
    never copied between ticks); ``version()`` changes whenever a request starts or ends.
    """

    def __init__(
        self,
        run_dir: Path,
        source: Callable[[], Mapping[int, InFlight]],
        version: Callable[[], int],
        *,
        interval_s: float = 0.5,
        inline_limit: int = 16 * 1024,
        keep_stalled_s: float = 60.0,
        max_stalled: int = 256,
    ) -> None:
        self.path = Path(run_dir) / INFLIGHT_FILE
        self.bodies = Path(run_dir) / BODIES_DIR
        self._source = source
        self._version = version
        self.interval_s = interval_s
        self.inline_limit = inline_limit
        self.keep_stalled_s = keep_stalled_s
        self.max_stalled = max_stalled
        self._stalled: OrderedDict[int, _Ended] = OrderedDict()
        self._stalled_version = 0
        self._written_bodies: set[int] = set()
        self._parts: dict[tuple[int, str], tuple[bytes, bytes]] = {}
        self._last: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._header = {"pid": os.getpid(), "host": socket.gethostname()}
        #: Publications written, and the time spent building and writing them (seconds).
        self.writes = 0
        self.busy_s = 0.0

    def start(self) -> None:
        """Start publishing from the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stalled(self, flight: InFlight) -> None:
        """Keep a request that just ended as ``stalled`` in the file for a while."""
        self._stalled[flight.planned.index] = _Ended(
            flight, time.time(), time.monotonic() + self.keep_stalled_s
        )
        while len(self._stalled) > self.max_stalled:
            self._stalled.popitem(last=False)
        self._stalled_version += 1

    async def close(self) -> None:
        """Stop publishing and remove the file and the body files (the run is over)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.path.unlink()
        shutil.rmtree(self.bodies, ignore_errors=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            # A full or read-only disk must not end the load; the next tick retries.
            with contextlib.suppress(OSError):
                await self.publish()

    def _fingerprint(self) -> tuple[int, int, int]:
        flights = self._source()
        tokens = 0
        for flight in flights.values():
            tokens += flight.account.token_chunks
        return (self._version(), self._stalled_version, tokens)

    async def publish(self, *, force: bool = False) -> bool:
        """Write the file if anything changed since the last write; True if it wrote."""
        now_mono = time.monotonic()
        while self._stalled and next(iter(self._stalled.values())).expires <= now_mono:
            self._stalled.popitem(last=False)
            self._stalled_version += 1
        fingerprint = self._fingerprint()
        if not force and fingerprint == self._last:
            return False
        started = time.perf_counter()
        flights = sorted(self._source().values(), key=lambda f: f.sent_perf)
        items: list[bytes] = []
        big: dict[int, bytes] = {}
        keep: set[int] = set()
        parts: dict[tuple[int, str], tuple[bytes, bytes]] = {}
        entries = [(f, "in_flight", None) for f in flights] + [
            (e.flight, "stalled", e.ended_at) for e in self._stalled.values()
        ]
        for flight, state, ended_at in entries:
            index = flight.planned.index
            key = (index, state)
            cached = self._parts.get(key)
            if cached is None:
                # What does not change while a request is in flight is encoded once.
                content = flight.content
                if content is None:
                    content = json.dumps(flight.planned.body, separators=(",", ":")).encode()
                if len(content) > self.inline_limit:
                    big[index] = content
                    tail = b',"body_file":"%s/%d.json"}' % (BODIES_DIR.encode(), index)
                else:
                    tail = b',"body":' + content + b"}"
                cached = (_static(flight, state, ended_at), tail)
            parts[key] = cached
            if cached[1].startswith(b',"body_file"'):
                keep.add(index)
            items.append(cached[0] + _dynamic(flight) + cached[1])
        big = {i: c for i, c in big.items() if i not in self._written_bodies}
        gone = self._written_bodies - keep
        doc = (
            json.dumps({**self._header, "published_at": round(time.time(), 3)})[:-1].encode()
            + b',"requests":['
            + b",".join(items)
            + b"]}\n"
        )
        self.busy_s += time.perf_counter() - started
        if big:
            # Large bodies go to disk once, off the event loop; the file that names them is
            # replaced only after they exist, and bodies it no longer names are removed after.
            await asyncio.to_thread(_write_bodies, self.bodies, big)
            self._written_bodies |= set(big)
        started = time.perf_counter()
        _atomic_write(self.path, doc)
        for index in gone:
            with contextlib.suppress(OSError):
                (self.bodies / f"{index}.json").unlink()
        self._written_bodies -= gone
        self.busy_s += time.perf_counter() - started
        self._parts = parts  # only once written: a failed write is redone in full next time
        self._last = fingerprint
        self.writes += 1
        return True


def _static(flight: InFlight, state: str, ended_at: float | None) -> bytes:
    """The fields of an entry that stay the same while it is listed, as ``{...,``."""
    head = {
        "source": "load",
        "state": state,
        "index": flight.planned.index,
        "path": flight.planned.path,
        "sent_at": round(flight.sent_at, 6),
    }
    if ended_at is not None:
        head["ended_at"] = round(ended_at, 6)
    return json.dumps(head, separators=(",", ":")).encode()[:-1] + b","


def _dynamic(flight: InFlight) -> bytes:
    """The fields that change as tokens arrive."""
    acc = flight.account
    last = acc.last_token
    last_at = "null" if last is None else repr(round(flight.sent_at + last - flight.sent_perf, 6))
    request_id = "null" if acc.request_id is None else json.dumps(acc.request_id)
    return (
        f'"request_id":{request_id},"tokens_so_far":{acc.token_chunks},"last_token_at":{last_at}'
    ).encode()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_bodies(directory: Path, new: Mapping[int, bytes]) -> None:
    directory.mkdir(exist_ok=True)
    for index, content in new.items():
        _atomic_write(directory / f"{index}.json", content + b"\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def read_inflight(run_dir: Path, *, now: float | None = None) -> list[dict[str, Any]]:
    """The requests a live load publishes in ``run_dir``, bodies inlined, with ``age_s`` and
    ``since_last_token_s`` as of ``now`` (unix time); [] when there is no file or the load
    that wrote it is gone (killed before it could remove it)."""
    run_dir = Path(run_dir)
    try:
        doc = json.loads((run_dir / INFLIGHT_FILE).read_bytes())
    except (OSError, ValueError):
        return []
    items = doc.get("requests", []) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        return []
    if isinstance(doc, dict):
        pid = doc.get("pid")
        if isinstance(pid, int) and doc.get("host") == socket.gethostname() and not _alive(pid):
            return []
    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        ref = item.get("body_file")
        if "body" not in item and isinstance(ref, str) and "/../" not in f"/{ref}/":
            with contextlib.suppress(OSError, ValueError):
                item = {**item, "body": json.loads((run_dir / ref).read_bytes())}
        sent_at = item.get("sent_at")
        if item.get("state", "in_flight") == "in_flight" and isinstance(sent_at, int | float):
            last = item.get("last_token_at")
            item = {
                **item,
                "age_s": round(now - sent_at, 3),
                "since_last_token_s": round(
                    now - (last if isinstance(last, int | float) else sent_at), 3
                ),
            }
        out.append(item)
    return out


__all__ = ["BODIES_DIR", "INFLIGHT_FILE", "InflightPublisher", "read_inflight"]
