"""The load runner: schedule, send, record, summarise (I/O).

Use from other code::

    from harness.load.runner import LoadConfig, LoadRunner, run_load

    config = LoadConfig(workload_name="chat-short", rate=20.0, duration_s=600, stall_after_s=30)
    summary = await run_load(config, base_url="http://127.0.0.1:8000", out_dir=run.path,
                             on_stall=lambda rec: print("stalled", rec["index"]))

or, to see the requests in flight while it runs (the watchdog writes them to
``inflight.jsonl`` when it files an incident)::

    runner = LoadRunner(config, base_url=..., out_dir=...)
    task = asyncio.create_task(runner.run())
    ...
    runner.inflight()        # [{"index", "path", "body", "sent_at", "tokens_so_far", ...}]
    runner.stop()            # stop sending; in-flight requests finish or time out
    summary = await task

Every finished request is appended to ``out_dir/requests.jsonl`` and flushed as it completes;
``out_dir/summary.json`` is written at the end (also after Ctrl-C or :meth:`LoadRunner.stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from harness.load import replay
from harness.load.client import InFlight, make_client, send_request, served_model
from harness.load.config import LoadConfig, LoadSettingError, rate_notes
from harness.load.factory import PlannedRequest, RequestFactory
from harness.load.inflight import InflightPublisher
from harness.load.results import write_run_files
from harness.load.tokenizer import PromptTokenizer, load_tokenizer
from harness.load.workload import load_workload, read_prompt_file
from harness.report.aggregate import RecordStats
from harness.report.loadsummary import Sends, Summary, load_summary, rounded
from harness.report.stats import auto_window_s

Record = dict[str, Any]

__all__ = ["LoadConfig", "LoadRunner", "LoadSettingError", "LoadStatus", "Summary", "run_load"]


@dataclass(frozen=True)
class LoadStatus:
    """Where a running load stands (for a progress display): a snapshot, safe to keep."""

    elapsed_s: float
    sent: int
    finished: int
    target: int | None  # the number of requests asked for, if any
    in_flight: int
    ok: int
    failed: int
    stalled: int
    output_tokens: int
    ttft_mean_ms: float | None


class LoadRunner:
    """One load run against one server. See the module docstring for use."""

    def __init__(
        self,
        config: LoadConfig,
        *,
        base_url: str,
        out_dir: Path,
        on_stall: Callable[[Record], None] | None = None,
        tokenizer: PromptTokenizer | None = None,
        workload_path: Path | None = None,
        notes: list[str] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.out_dir = Path(out_dir)
        self.on_stall = on_stall
        self.notes: list[str] = list(notes or [])
        self._tokenizer = tokenizer
        self._workload_path = workload_path
        self._inflight: dict[int, InFlight] = {}
        self._inflight_version = 0  # changes whenever a request starts or ends
        self._publisher: InflightPublisher | None = None
        self._records_offset = 0
        self._stop: asyncio.Event | None = None  # created inside the running loop
        self._claimed = 0
        self._hard_stop = False
        self._stop_reason: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sends = Sends()
        self._start_perf = 0.0
        self._start_wall = 0.0
        self._fh: IO[str] | None = None
        # Aggregates of the finished requests (None until the run starts).
        self.stats: RecordStats | None = None
        self.factory: RequestFactory | None = None

    # ------------------------------------------------------------------ public

    def inflight(self) -> list[Record]:
        """The requests on the wire now, with their payloads (for replay), oldest first."""
        now = time.perf_counter()
        items = sorted(self._inflight.values(), key=lambda f: f.sent_perf)
        return [f.to_dict(now) for f in items]

    def status(self) -> LoadStatus | None:
        """Where the run stands now (None before it started)."""
        stats = self.stats
        if stats is None:
            return None
        return LoadStatus(
            elapsed_s=time.perf_counter() - self._start_perf,
            sent=self.sends.count,
            finished=stats.finished,
            target=self.config.requests,
            in_flight=len(self._inflight),
            ok=stats.counts["ok"],
            failed=stats.counts["failed"],
            stalled=stats.counts["stalled"],
            output_tokens=stats.output_tokens,
            ttft_mean_ms=stats.latency["ttft"].mean,
        )

    @property
    def stop_reason(self) -> str | None:
        """Why the run stopped or is stopping (None while it runs)."""
        return self._stop_reason

    def stop(self, reason: str = "stopped", *, hard: bool = False) -> None:
        """Stop sending. ``hard`` also cancels the requests in flight (recorded ``aborted``)."""
        self._stop_reason = self._stop_reason or reason
        if hard:
            self._hard_stop = True
            for task in list(self._tasks):
                task.cancel()
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> Summary:
        """Run to the end (count, duration, error budget or :meth:`stop`); return the summary."""
        self._stop = asyncio.Event()
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # At most --concurrency requests are ever in flight (closed loop, or open loop capped):
        # the pool holds that many connections, kept alive (also for https://).
        max_conn = cfg.concurrency
        client = make_client(
            self.base_url,
            stall_after_s=cfg.stall_after_s,
            max_connections=max_conn,
            transport=cfg.http,
            api_key=cfg.api_key,
        )
        try:
            await self._prepare(client)
            assert self.factory is not None
            window = cfg.window_s or auto_window_s(cfg.duration_s)
            self.stats = RecordStats(0.0, window_s=window, slo=cfg.slo)
            records = self.out_dir / "requests.jsonl"
            self._fh = records.open("a", encoding="utf-8")
            # This run's records start here (a run directory may hold earlier loads' records).
            self._records_offset = self._fh.tell()
            if cfg.publish_inflight:
                self._publisher = InflightPublisher(
                    self.out_dir, lambda: self._inflight, lambda: self._inflight_version
                )
                self._publisher.start()
            self._start_perf = time.perf_counter()
            self._start_wall = time.time()
            timer = (
                asyncio.get_running_loop().call_later(cfg.duration_s, self.stop, "duration reached")
                if cfg.duration_s is not None
                else None
            )
            try:
                if cfg.rate is not None:
                    await self._open_loop(client)
                else:
                    await self._closed_loop(client)
                await self._drain()
            except asyncio.CancelledError:
                self.stop("interrupted", hard=True)
                await self._drain()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if self._publisher is not None:
                    await self._publisher.close()
                summary = self._summary()
                self._fh.close()
                write_run_files(self.out_dir, summary, records, records_offset=self._records_offset)
            return summary
        finally:
            await client.aclose()

    # ------------------------------------------------------------------ setup

    async def _prepare(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        workload = cfg.workload
        wl_path = self._workload_path
        if workload is None:
            workload, wl_path = load_workload(cfg.workload_name)
        model, root = cfg.model, None
        if model is None or (self._tokenizer is None and cfg.tokenizer is None):
            listed, root = await served_model(client, self.base_url, need_name=model is None)
            model = model or listed
        assert model is not None  # served_model raised otherwise
        tokenizer = self._tokenizer
        if tokenizer is None:
            source = cfg.tokenizer or (root if root and Path(root).exists() else None)
            tokenizer, note = load_tokenizer(source)
            if note:
                self.notes.append(note)
        self._tokenizer = tokenizer
        file_prompts = None
        if workload.prompt.source != "synthetic" and cfg.prompt_tokens is None:
            file_prompts = read_prompt_file(
                workload.prompt, wl_path.parent if wl_path else Path.cwd()
            )
        self.model = model
        self.workload = workload
        self.factory = RequestFactory(
            workload,
            model=model,
            seed=cfg.seed,
            tokenizer=tokenizer,
            overrides=cfg.overrides(),
            file_prompts=file_prompts,
        )

    # ------------------------------------------------------------------ sending

    def _budget_left(self) -> bool:
        cfg = self.config
        if self._stop is not None and self._stop.is_set():
            return False
        return not (cfg.requests is not None and self._claimed >= cfg.requests)

    async def _build(self, index: int) -> PlannedRequest:
        if self.config.replay:
            item = self.config.replay[index - self.config.first_index]
            return replay.planned(item, index, self.model)
        assert self.factory is not None
        if self.factory.has_images:
            # Image encoding takes milliseconds to seconds: keep it off the event loop.
            return await asyncio.to_thread(self.factory.build, index)
        return self.factory.build(index)

    async def _open_loop(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        arrivals = cfg.arrivals()
        assert arrivals is not None and self._stop is not None
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else None
        prefetch: asyncio.Queue[PlannedRequest] | None = None
        producer: asyncio.Task[None] | None = None
        assert self.factory is not None
        if self.factory.has_images:
            prefetch = asyncio.Queue(maxsize=8)
            producer = asyncio.create_task(self._produce(prefetch))
        start = loop.time()
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            times = replay.replay_times(cfg.replay) if cfg.replay else arrivals.times()
            for index, due in enumerate(times):
                if not self._budget_left():
                    break
                if cfg.duration_s is not None and due >= cfg.duration_s:
                    break
                target = start + due
                delay = target - loop.time()
                if delay > 0:
                    # Absolute due time: sleep to it, waking early only to stop.
                    await asyncio.wait({stop_wait}, timeout=delay)
                    if self._stop.is_set():
                        break
                if sem is not None:
                    if sem.locked():
                        self.sends.waited_for_slot += 1
                    await sem.acquire()
                    if self._stop.is_set():
                        sem.release()
                        break
                self._claimed += 1
                planned = (
                    await prefetch.get()
                    if prefetch is not None
                    else await self._build(cfg.first_index + index)
                )
                self._launch(client, planned, due, sem)
        finally:
            stop_wait.cancel()
            if producer is not None:
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    async def _produce(self, queue: asyncio.Queue[PlannedRequest]) -> None:
        index = self.config.first_index
        while True:
            await queue.put(await self._build(index))
            index += 1

    async def _closed_loop(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        assert cfg.concurrency is not None

        async def worker() -> None:
            while self._budget_left():
                index = cfg.first_index + self._claimed
                self._claimed += 1  # claimed before the await so workers never overshoot
                planned = await self._build(index)
                if self._stop is not None and self._stop.is_set():
                    return
                flight = self._start_flight(planned, None)
                rec = await self._send(client, flight)
                self._finish(flight, rec)

        workers = [asyncio.create_task(worker()) for _ in range(cfg.concurrency)]
        self._tasks.update(workers)
        try:
            await asyncio.gather(*workers, return_exceptions=False)
        finally:
            for w in workers:
                self._tasks.discard(w)

    def _start_flight(self, planned: PlannedRequest, due: float | None) -> InFlight:
        now = time.perf_counter()
        flight = InFlight(planned=planned, scheduled_s=due, sent_at=time.time(), sent_perf=now)
        self._inflight[planned.index] = flight
        self._inflight_version += 1
        self.sends.add(now - self._start_perf, due)
        return flight

    def _launch(
        self,
        client: httpx.AsyncClient,
        planned: PlannedRequest,
        due: float,
        sem: asyncio.Semaphore | None,
    ) -> None:
        flight = self._start_flight(planned, due)

        async def one() -> None:
            try:
                rec = await self._send(client, flight)
                self._finish(flight, rec)
            finally:
                if sem is not None:
                    sem.release()

        task = asyncio.create_task(one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, client: httpx.AsyncClient, flight: InFlight) -> Record:
        cfg = self.config
        return await send_request(
            client,
            flight,
            stall_after_s=cfg.stall_after_s,
            deadline_s=cfg.deadline_s,
            sse_mode=cfg.sse_mode,
        )

    def _finish(self, flight: InFlight, rec: Record) -> None:
        self._inflight.pop(flight.planned.index, None)
        self._inflight_version += 1
        if rec["status"] == "stalled" and self._publisher is not None:
            self._publisher.stalled(flight)
        assert self.stats is not None and self._fh is not None
        finished_s = time.perf_counter() - self._start_perf
        rec["sent_s"] = round(flight.sent_perf - self._start_perf, 6)
        if flight.scheduled_s is not None:
            rec["scheduled_s"] = round(flight.scheduled_s, 6)
        # Before the per-token gaps may be dropped: they feed the ITL percentiles.
        self.stats.add(rec, finished_s)
        if not self.config.keep_itl:
            del rec["itl_ms"]
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        if rec["status"] == "stalled" and self.on_stall is not None:
            try:
                self.on_stall(rec)
            except Exception as exc:  # a callback bug must not end the run
                self.notes.append(f"on_stall callback failed: {type(exc).__name__}: {exc}")
        failed = self.stats.counts["failed"]
        if self.config.over_budget(failed, self.stats.finished):
            self.stop(f"error budget exceeded ({failed} failed)")

    async def _drain(self) -> None:
        """Wait for the requests in flight; each ends by its own stall timeout or deadline."""
        cfg = self.config
        tasks = [t for t in self._tasks if not t.done()]
        if not tasks:
            return
        timeout = cfg.drain_s if cfg.drain_s is not None else None
        if self._hard_stop:
            timeout = 5.0
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5.0)

    # ------------------------------------------------------------------ summary

    def _summary(self) -> Summary:
        cfg = self.config
        stats = self.stats
        assert stats is not None
        end = max(
            stats.last_at_s or 0.0,
            time.perf_counter() - self._start_perf if self._start_perf else 0.0,
        )
        # What the schedule should have sent, when it sent for its whole duration.
        expected = cfg.expected_sends() if self._stop_reason == "duration reached" else None
        out = load_summary(
            stats,
            self.sends,
            requested_rate=cfg.rate,
            concurrency=cfg.concurrency,
            end_s=end,
            expected=expected,
        )
        out["run"] = self._run_block(end)
        out["notes"] = [*self.notes, *rate_notes(cfg, out["rate"], expected, self.sends)]
        return out

    def _run_block(self, elapsed: float) -> dict[str, Any]:
        cfg = self.config
        factory = self.factory
        return {
            "base_url": self.base_url,
            "model": getattr(self, "model", cfg.model),
            "workload": cfg.workload_name,
            "workload_path": str(self._workload_path) if self._workload_path else None,
            "seed": cfg.seed,
            "mode": "open" if cfg.rate is not None else "closed",
            "arrival": cfg.arrival if cfg.rate is not None else None,
            "burstiness": cfg.burstiness if cfg.arrival == "gamma" else None,
            "ramp": {"from": cfg.ramp_from, "seconds": cfg.ramp_s} if cfg.ramp_s else None,
            "concurrency": cfg.concurrency,
            "duration_s": cfg.duration_s,
            "requests": cfg.requests,
            "stall_after_s": cfg.stall_after_s,
            "deadline_s": cfg.deadline_s,
            "prompt_tokens": cfg.prompt_tokens,
            "max_tokens": cfg.max_tokens,
            "max_image_pixels": factory.max_image_pixels if factory else None,
            "max_images_per_request": factory.max_images_per_request if factory else None,
            "tokenizer": self._tokenizer.name if self._tokenizer else None,
            "tokenizer_exact": self._tokenizer.exact if self._tokenizer else None,
            "api": factory.api if factory else cfg.api,
            "metric_percentiles": list(cfg.metric_percentiles),
            "http": cfg.http,
            "sse": cfg.sse_mode,
            "started_at": round(self._start_wall, 3),
            "elapsed_s": rounded(elapsed if elapsed > 0 else None),
            "stop_reason": self._stop_reason or "done",
            "pid": os.getpid(),
        }


async def run_load(
    config: LoadConfig,
    *,
    base_url: str,
    out_dir: Path,
    on_stall: Callable[[Record], None] | None = None,
) -> Summary:
    """Run one load against ``base_url``, recording into ``out_dir``; return ``summary.json``.

    ``requests.jsonl`` gets one line per finished request as it finishes (status ``ok``,
    ``failed``, ``stalled`` or ``aborted``); ``on_stall(record)`` is called for each stalled
    one. To see in-flight requests while it runs, use :class:`LoadRunner` directly.
    """
    runner = LoadRunner(config, base_url=base_url, out_dir=out_dir, on_stall=on_stall)
    return await runner.run()
