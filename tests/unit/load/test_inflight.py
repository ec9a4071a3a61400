"""The in-flight publisher (``inflight.json``) and its reader, with requests made by hand."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.load.client import InFlight
from harness.load.factory import PlannedRequest
from harness.load.inflight import InflightPublisher, read_inflight


def flight(index: int, size: int = 10, tokens: int = 0) -> InFlight:
    body = {"model": "m", "prompt": "x" * size, "max_tokens": 4, "stream": True}
    f = InFlight(
        planned=PlannedRequest(index, "/v1/completions", body, 1, 4),
        scheduled_s=None,
        sent_at=time.time(),
        sent_perf=time.perf_counter() + index * 1e-6,
    )
    f.content = json.dumps(body, separators=(",", ":")).encode()
    f.account.token_chunks = tokens
    return f


class Load:
    """Stands in for the runner: the live mapping and its version."""

    def __init__(self) -> None:
        self.flights: dict[int, InFlight] = {}
        self.version = 0

    def add(self, f: InFlight) -> None:
        self.flights[f.planned.index] = f
        self.version += 1

    def remove(self, index: int) -> InFlight:
        self.version += 1
        return self.flights.pop(index)

    def publisher(self, run: Path, **kw: Any) -> InflightPublisher:
        return InflightPublisher(run, lambda: self.flights, lambda: self.version, **kw)


def test_publishes_bodies_inline_and_large_ones_once_to_side_files(tmp_path: Path) -> None:
    load = Load()
    pub = load.publisher(tmp_path, inline_limit=1000)

    async def main() -> None:
        load.add(flight(0))
        load.add(flight(1, size=5000))
        assert await pub.publish()
        doc = json.loads((tmp_path / "inflight.json").read_text())
        assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname()
        small, big = doc["requests"]
        assert small["body"] == load.flights[0].planned.body and small["state"] == "in_flight"
        assert small["source"] == "load" and small["path"] == "/v1/completions"
        assert "body" not in big and big["body_file"] == "inflight.d/1.json"
        side = tmp_path / "inflight.d" / "1.json"
        assert json.loads(side.read_text()) == load.flights[1].planned.body
        written = side.stat().st_mtime_ns

        # Nothing changed: nothing written.
        assert not await pub.publish()
        # A token arrived: written again, the side file untouched.
        load.flights[0].account.token_chunks = 1
        assert await pub.publish()
        assert side.stat().st_mtime_ns == written
        # Read back as the watchdog does: bodies inlined, ages computed.
        items = read_inflight(tmp_path, now=load.flights[0].sent_at + 2.5)
        assert [i["body"] for i in items] == [
            load.flights[0].planned.body,
            load.flights[1].planned.body,
        ]
        assert items[0]["age_s"] == 2.5 and items[0]["tokens_so_far"] == 1
        # The big one finishes: its side file goes, after the file that named it is replaced.
        load.remove(1)
        assert await pub.publish()
        assert not side.exists()
        assert [i["index"] for i in read_inflight(tmp_path)] == [0]
        await pub.close()

    asyncio.run(main())
    assert not (tmp_path / "inflight.json").exists() and not (tmp_path / "inflight.d").exists()
    assert read_inflight(tmp_path) == []


def test_stalled_requests_stay_listed_for_a_while(tmp_path: Path) -> None:
    load = Load()
    pub = load.publisher(tmp_path, keep_stalled_s=0.2)

    async def main() -> list[list[dict[str, Any]]]:
        load.add(flight(3, tokens=2))
        await pub.publish()
        pub.stalled(load.remove(3))
        await pub.publish()
        seen = [read_inflight(tmp_path)]
        deadline = time.monotonic() + 30
        while read_inflight(tmp_path) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await pub.publish()
        seen.append(read_inflight(tmp_path))
        await pub.close()
        return seen

    first, later = asyncio.run(main())
    assert [(i["index"], i["state"], i["tokens_so_far"]) for i in first] == [(3, "stalled", 2)]
    assert "ended_at" in first[0] and "age_s" not in first[0]
    assert later == []


def test_the_loop_publishes_on_its_own_and_stops(tmp_path: Path) -> None:
    load = Load()
    pub = load.publisher(tmp_path, interval_s=0.01)

    async def main() -> int:
        pub.start()
        load.add(flight(0))
        deadline = time.monotonic() + 30
        while not (tmp_path / "inflight.json").exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await pub.close()
        return pub.writes

    assert asyncio.run(main()) >= 1
    assert not (tmp_path / "inflight.json").exists()


def test_a_file_left_by_a_dead_load_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = {
        "pid": int(dead.stdout),
        "host": socket.gethostname(),
        "requests": [{"index": 1, "body": {}}],
    }
    (tmp_path / "inflight.json").write_text(json.dumps(doc))
    assert read_inflight(tmp_path) == []
    doc["pid"] = os.getpid()
    (tmp_path / "inflight.json").write_text(json.dumps(doc))
    assert [i["index"] for i in read_inflight(tmp_path)] == [1]
    # The older list form (a bare list) is still read; a broken file is no requests.
    (tmp_path / "inflight.json").write_text(json.dumps([{"index": 2}]))
    assert [i["index"] for i in read_inflight(tmp_path)] == [2]
    (tmp_path / "inflight.json").write_text('{"requests": [')
    assert read_inflight(tmp_path) == []


def test_a_body_file_outside_the_run_directory_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"x": 1}')
    run = tmp_path / "run"
    run.mkdir()
    doc = {"requests": [{"index": 1, "body_file": "../secret.json"}]}
    (run / "inflight.json").write_text(json.dumps(doc))
    assert read_inflight(run) == [{"index": 1, "body_file": "../secret.json"}]
