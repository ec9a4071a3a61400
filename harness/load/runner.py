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
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import httpx

from harness.errors import BadInput, EnvironmentProblem
from harness.load.arrivals import ArrivalKind, Arrivals
from harness.load.client import InFlight, make_client, send_request
from harness.load.factory import Overrides, PlannedRequest, RequestFactory
from harness.load.inflight import InflightPublisher
from harness.load.results import write_result_files
from harness.load.sse import SSEMode
from harness.load.tokenizer import PromptTokenizer, load_tokenizer, model_dir_from_models_listing
from harness.load.workload import Workload, load_workload, read_prompt_file
from harness.report.exports import DEFAULT_METRIC_PERCENTILES
from harness.report.stats import Distribution, Slo, WindowSeries, auto_window_s, goodput

Record = dict[str, Any]
Summary = dict[str, Any]


@dataclass
class LoadConfig:
    """Everything a load run needs besides the server address and the output directory.

    Exactly one of ``rate`` (open loop; requests/s, the end rate of a ramp) and ``concurrency``
    (closed loop) is usually given; both together mean "the rate, with at most ``concurrency``
    in flight". At least one of ``duration_s`` and ``requests`` should bound the run.
    """

    workload_name: str = "chat-short"
    workload: Workload | None = None  # given directly instead of by name
    rate: float | None = None
    concurrency: int | None = None
    duration_s: float | None = None
    requests: int | None = None
    seed: int = 0
    arrival: ArrivalKind = "poisson"
    burstiness: float = 1.0
    ramp_from: float | None = None
    ramp_s: float = 0.0
    stall_after_s: float = 60.0
    deadline_s: float = 600.0
    drain_s: float | None = None
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    max_image_pixels: int | None = None
    max_images_per_request: int | None = None
    ignore_eos: bool | None = None
    api: Literal["chat", "completions"] | None = None
    model: str | None = None
    tokenizer: str | None = None
    slo: Slo = field(default_factory=Slo)
    error_budget: float | None = None
    window_s: float | None = None
    sse_mode: SSEMode = "lean"
    http: Literal["lean", "httpx", "aiohttp"] = "lean"
    keep_itl: bool = True
    requested_run: str | None = None  # informational: --run RUN_ID
    # Number of the first request: a resumed or restarted campaign continues the same seeded
    # sequence (request i is always the same prompt) without reusing an index already recorded.
    first_index: int = 0
    # Percentiles bench_result.json carries (``vllm bench serve --metric-percentiles``).
    metric_percentiles: tuple[float, ...] = DEFAULT_METRIC_PERCENTILES
    # Publish the requests in flight to out_dir/inflight.json for the watchdog.
    publish_inflight: bool = True

    def validate(self) -> None:
        """Raise :class:`BadInput` for contradictory or out-of-range settings."""
        if self.rate is None and self.concurrency is None:
            raise BadInput("give --rate R (open loop) or --concurrency C (closed loop)")
        if self.rate is not None and not self.rate > 0:
            raise BadInput("--rate must be positive")
        if self.concurrency is not None and self.concurrency < 1:
            raise BadInput("--concurrency must be at least 1")
        if self.duration_s is None and self.requests is None:
            raise BadInput("give --duration S or --requests N (or both)")
        if self.duration_s is not None and not self.duration_s > 0:
            raise BadInput("--duration must be positive")
        if self.requests is not None and self.requests < 1:
            raise BadInput("--requests must be at least 1")
        if not self.stall_after_s > 0 or not self.deadline_s > 0:
            raise BadInput("--stall-after and --deadline must be positive")
        if self.ramp_s and self.rate is None:
            raise BadInput("--ramp needs --rate (the rate to ramp to)")
        if self.error_budget is not None and self.error_budget <= 0:
            raise BadInput("--error-budget must be positive (a count, or a fraction below 1)")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise BadInput("--max-image-pixels must be at least 1")
        if self.max_images_per_request is not None and self.max_images_per_request < 1:
            raise BadInput("--max-images-per-request must be at least 1")
        if self.first_index < 0:
            raise BadInput("the first request index must not be negative")
        if not self.metric_percentiles or not all(0 <= p <= 100 for p in self.metric_percentiles):
            raise BadInput("--metric-percentiles must be numbers from 0 to 100, e.g. 50,90,99")


class _Stats:
    """Running aggregates; bounded memory (see :class:`harness.report.stats.Distribution`)."""

    def __init__(self, window_s: float, slo: Slo) -> None:
        self.ttft = Distribution()
        self.itl = Distribution()
        self.tpot = Distribution()
        self.e2e = Distribution()
        self.send_lag = Distribution()
        self.counts = {"ok": 0, "failed": 0, "stalled": 0, "aborted": 0}
        self.errors: dict[str, int] = {}
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.good = 0
        self.slo = slo
        self.windows = WindowSeries(window_s, slo)
        self.last_finish: float = 0.0
        self._window_index = 0

    def add(self, rec: Record, finished_s: float) -> None:
        status = rec["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        self.last_finish = max(self.last_finish, finished_s)
        if rec.get("error"):
            key = str(rec["error"])
            self.errors[key] = self.errors.get(key, 0) + 1
        if status == "ok":
            self.output_tokens += int(rec.get("output_tokens") or 0)
            self.prompt_tokens += int(rec.get("prompt_tokens") or 0)
            if rec["ttft_ms"] is not None:
                self.ttft.add(rec["ttft_ms"])
            if rec["tpot_ms"] is not None:
                self.tpot.add(rec["tpot_ms"])
            if rec["e2e_ms"] is not None:
                self.e2e.add(rec["e2e_ms"])
            if self.slo.active and self.slo.met(rec):
                self.good += 1
        self.windows.add(finished_s, rec)
        index = int(finished_s // self.windows.width_s)
        if index != self._window_index:
            # Reduce windows that ended a full window ago, so their samples are freed.
            self._window_index = index
            self.windows.close_before(finished_s - self.windows.width_s)

    @property
    def finished(self) -> int:
        return sum(self.counts.values())


class LoadRunner:
    """One load run against one server. See the module docstring for use."""

    def __init__(
        self,
        config: LoadConfig,
        *,
        base_url: str,
        out_dir: Path,
        on_stall: Callable[[Record], None] | None = None,
        progress: bool = True,
        tokenizer: PromptTokenizer | None = None,
        workload_path: Path | None = None,
        notes: list[str] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.out_dir = Path(out_dir)
        self.on_stall = on_stall
        self.progress = progress
        self.notes: list[str] = list(notes or [])
        self._tokenizer = tokenizer
        self._workload_path = workload_path
        self._inflight: dict[int, InFlight] = {}
        self._inflight_version = 0  # changes whenever a request starts or ends
        self._publisher: InflightPublisher | None = None
        self._cap_waits = 0  # open-loop sends that waited for a --concurrency slot
        self._records_offset = 0
        self._stop: asyncio.Event | None = None  # created inside the running loop
        self._claimed = 0
        self._hard_stop = False
        self._stop_reason: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent = 0
        self._first_send: float | None = None
        self._last_send: float | None = None
        self._first_sched: float | None = None
        self._last_sched: float | None = None
        self._start_perf = 0.0
        self._start_wall = 0.0
        self._fh: IO[str] | None = None
        self.stats: _Stats | None = None
        self.factory: RequestFactory | None = None

    # ------------------------------------------------------------------ public

    def inflight(self) -> list[Record]:
        """The requests on the wire now, with their payloads (for replay), oldest first."""
        now = time.perf_counter()
        items = sorted(self._inflight.values(), key=lambda f: f.sent_perf)
        return [f.to_dict(now) for f in items]

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
        )
        try:
            await self._prepare(client)
            assert self.factory is not None
            window = cfg.window_s or auto_window_s(cfg.duration_s)
            self.stats = _Stats(window, cfg.slo)
            records = self.out_dir / "requests.jsonl"
            self._fh = records.open("a", encoding="utf-8")
            # This run's records start here (a run directory may hold earlier loads' records).
            self._records_offset = self._fh.tell()
            if cfg.publish_inflight:
                self._publisher = InflightPublisher(
                    self.out_dir, lambda: self._inflight, lambda: self._inflight_version
                )
                self._publisher.start()
            display = _Progress(self) if self.progress else None
            if display is not None:
                display.start()
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
                if display is not None:
                    display.stop()
                if self._publisher is not None:
                    await self._publisher.close()
                summary = self._summary()
                self._write_summary(summary)
                self._fh.close()
                self._write_result_files(summary, records)
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
        model = cfg.model
        root: str | None = None
        if model is None or (self._tokenizer is None and cfg.tokenizer is None):
            try:
                resp = await client.get("/v1/models", timeout=30.0)
            except httpx.HTTPError as exc:
                raise EnvironmentProblem(
                    f"cannot reach {self.base_url}/v1/models: {type(exc).__name__}: {exc}",
                    hint="is the server up? (give --model to skip this check)",
                ) from None
            if resp.status_code == 200:
                root = model_dir_from_models_listing(resp.content)
                if model is None:
                    try:
                        model = str(resp.json()["data"][0]["id"])
                    except (ValueError, KeyError, IndexError, TypeError):
                        model = None
            if model is None:
                raise EnvironmentProblem(
                    f"{self.base_url}/v1/models did not name a model (HTTP {resp.status_code})",
                    hint="give --model NAME",
                )
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
            overrides=Overrides(
                prompt_tokens=cfg.prompt_tokens,
                max_tokens=cfg.max_tokens,
                max_image_pixels=cfg.max_image_pixels,
                max_images_per_request=cfg.max_images_per_request,
                ignore_eos=cfg.ignore_eos,
                api=cfg.api,
            ),
            file_prompts=file_prompts,
        )

    # ------------------------------------------------------------------ sending

    def _budget_left(self) -> bool:
        cfg = self.config
        if self._stop is not None and self._stop.is_set():
            return False
        return not (cfg.requests is not None and self._claimed >= cfg.requests)

    async def _build(self, index: int) -> PlannedRequest:
        assert self.factory is not None
        if self.factory.has_images:
            # Image encoding takes milliseconds to seconds: keep it off the event loop.
            return await asyncio.to_thread(self.factory.build, index)
        return self.factory.build(index)

    async def _open_loop(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        assert cfg.rate is not None and self._stop is not None
        arrivals = Arrivals(
            rate=cfg.rate,
            kind=cfg.arrival,
            burstiness=cfg.burstiness,
            ramp_from=cfg.ramp_from,
            ramp_s=cfg.ramp_s,
            seed=cfg.seed,
        )
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
            for index, due in enumerate(arrivals.times()):
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
                        self._cap_waits += 1
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
        self._sent += 1
        rel = now - self._start_perf
        if self._first_send is None:
            self._first_send = rel
        self._last_send = rel
        if due is not None:
            if self._first_sched is None:
                self._first_sched = due
            self._last_sched = due
            assert self.stats is not None
            self.stats.send_lag.add(max(0.0, (rel - due) * 1000.0))
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
        if rec["status"] == "ok":
            for gap in rec["itl_ms"]:
                self.stats.itl.add(gap)
        if not self.config.keep_itl:
            del rec["itl_ms"]
        self.stats.add(rec, finished_s)
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        if rec["status"] == "stalled" and self.on_stall is not None:
            try:
                self.on_stall(rec)
            except Exception as exc:  # a callback bug must not end the run
                self.notes.append(f"on_stall callback failed: {type(exc).__name__}: {exc}")
        budget = self.config.error_budget
        if budget is not None:
            failed = self.stats.counts["failed"]
            over = (
                failed >= budget
                if budget >= 1
                else (self.stats.finished >= 20 and failed / self.stats.finished > budget)
            )
            if over:
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
            stats.last_finish, time.perf_counter() - self._start_perf if self._start_perf else 0.0
        )
        elapsed = end if end > 0 else math.nan
        completed = stats.counts["ok"]
        n_sent = self._sent
        achieved: float | None
        scheduled: float | None = None
        if cfg.rate is not None:
            span = (self._last_send or 0.0) - (self._first_send or 0.0)
            achieved = (n_sent - 1) / span if n_sent > 1 and span > 0 else None
            sched_span = (self._last_sched or 0.0) - (self._first_sched or 0.0)
            scheduled = (n_sent - 1) / sched_span if n_sent > 1 and sched_span > 0 else None
        else:
            achieved = completed / elapsed if elapsed > 0 else None
        rps = completed / elapsed if elapsed > 0 else None
        tps = stats.output_tokens / elapsed if elapsed > 0 else None
        expected = self._expected_sent()
        capped = self._capped()
        notes = list(self.notes)
        # When the cap held the sends back, the cap (noted below) explains the count.
        note = (
            _expected_note(cfg, expected, n_sent)
            if expected is not None and capped is None
            else None
        )
        if note is not None:
            notes.append(note)
        if capped is not None:
            notes.append(
                f"--concurrency {cfg.concurrency} capped the rate: {capped['waited']} of "
                f"{n_sent} sends waited for a free slot (send lag p50 "
                f"{_fmt_ms(stats.send_lag.quantile(50))}); achieved {_r(achieved)}/s of the "
                f"{cfg.rate:g}/s requested"
            )
        out: Summary = {
            "requests": {
                "completed": completed,
                "failed": stats.counts["failed"],
                "stalled": stats.counts["stalled"],
                "aborted": stats.counts["aborted"],
                "sent": n_sent,
            },
            "throughput": {
                "requests_per_s": _r(rps),
                "output_tokens_per_s": _r(tps),
                "prompt_tokens_per_s": _r(stats.prompt_tokens / elapsed if elapsed > 0 else None),
            },
            "rate": {
                "requested": cfg.rate,
                "achieved": _r(achieved),
                "scheduled": _r(scheduled),
                "achieved_over_requested": _r(achieved / cfg.rate)
                if achieved is not None and cfg.rate
                else None,
                "send_lag_ms": stats.send_lag.summary() if cfg.rate is not None else None,
                "expected_sent": expected["mean"] if expected else None,
                "expected_sent_range": [expected["low"], expected["high"]] if expected else None,
                "capped_by_concurrency": capped,
            },
            "latency_ms": {
                "ttft": stats.ttft.summary(),
                "itl": stats.itl.summary(),
                "tpot": stats.tpot.summary(),
                "e2e": stats.e2e.summary(),
            },
            "goodput": goodput(stats.good, elapsed, stats.finished, cfg.slo)
            if cfg.slo.active
            else None,
            "windows": stats.windows.series(end_s=end),
            "errors": dict(sorted(stats.errors.items())),
            "tokens": {"output": stats.output_tokens, "prompt": stats.prompt_tokens},
            "run": {
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
                "max_image_pixels": self.factory.max_image_pixels if self.factory else None,
                "max_images_per_request": self.factory.max_images_per_request
                if self.factory
                else None,
                "tokenizer": self._tokenizer.name if self._tokenizer else None,
                "tokenizer_exact": self._tokenizer.exact if self._tokenizer else None,
                "api": self.factory.api if self.factory else cfg.api,
                "metric_percentiles": list(cfg.metric_percentiles),
                "http": cfg.http,
                "sse": cfg.sse_mode,
                "started_at": round(self._start_wall, 3),
                "elapsed_s": _r(elapsed),
                "stop_reason": self._stop_reason or "done",
                "pid": os.getpid(),
            },
            "notes": notes,
        }
        return out

    def _expected_sent(self) -> dict[str, Any] | None:
        """How many requests an open-loop schedule sends over the run's duration, on average and
        for 95 % of seeds; None unless the run sent for its whole ``--duration``."""
        cfg = self.config
        if cfg.rate is None or cfg.duration_s is None or self._stop_reason != "duration reached":
            return None
        arrivals = Arrivals(
            rate=cfg.rate,
            kind=cfg.arrival,
            burstiness=cfg.burstiness,
            ramp_from=cfg.ramp_from,
            ramp_s=cfg.ramp_s,
            seed=cfg.seed,
        )
        mean = arrivals.expected_count(cfg.duration_s)
        low, high = arrivals.count_range(cfg.duration_s)
        return {"mean": round(mean, 3), "low": low, "high": high}

    def _capped(self) -> dict[str, Any] | None:
        """The open-loop rate was held back by --concurrency: sends waited for a free slot."""
        cfg = self.config
        if cfg.rate is None or cfg.concurrency is None or not self._cap_waits:
            return None
        return {"concurrency": cfg.concurrency, "waited": self._cap_waits}

    def _write_result_files(self, summary: Summary, records: Path) -> None:
        try:
            write_result_files(self.out_dir, summary, records, records_offset=self._records_offset)
        except (OSError, ValueError) as exc:
            # summary.json is already written; say what is missing instead of losing the run.
            summary["notes"].append(
                f"bench_result.json / requests.csv not written: {type(exc).__name__}: {exc}"
            )
            self._write_summary(summary)

    def _write_summary(self, summary: Summary) -> None:
        path = self.out_dir / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n")
        os.replace(tmp, path)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _expected_note(cfg: LoadConfig, expected: Mapping[str, Any], sent: int) -> str | None:
    """A note on the realised vs requested rate of a short or unlucky open-loop schedule
    (None for a run long enough that the count is close to its expectation)."""
    duration = cfg.duration_s or 0.0
    kind = {"poisson": "Poisson", "gamma": "gamma", "constant": "constant"}[cfg.arrival]
    what = (
        f"{kind} arrivals at {cfg.rate:g}/s"
        + (f" (ramp from {cfg.ramp_from:g}/s over {cfg.ramp_s:g} s)" if cfg.ramp_s else "")
        + f" over {duration:g} s send {expected['mean']:g} requests on average"
    )
    low, high = expected["low"], expected["high"]
    if cfg.arrival != "constant":
        what += f" (95 % of seeds: {low} to {high})"
    if not low <= sent <= high:
        return (
            f"{what}; this run sent {sent} (seed {cfg.seed} drew an unusual schedule, "
            f"realised {sent / duration:.3g}/s): a longer --duration or several --seed values "
            "give a rate closer to the one requested"
        )
    spread = (high - low) / 2 / expected["mean"] if expected["mean"] else 0.0
    if cfg.arrival != "constant" and spread > 0.1:
        return (
            f"short run: {what}; this run sent {sent}. The realised rate of so short a run "
            f"varies by about ±{spread:.0%} from seed to seed"
        )
    return None


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


async def run_load(
    config: LoadConfig,
    *,
    base_url: str,
    out_dir: Path,
    on_stall: Callable[[Record], None] | None = None,
    progress: bool = True,
) -> Summary:
    """Run one load against ``base_url``, recording into ``out_dir``; return ``summary.json``.

    ``requests.jsonl`` gets one line per finished request as it finishes (status ``ok``,
    ``failed``, ``stalled`` or ``aborted``); ``on_stall(record)`` is called for each stalled
    one. To see in-flight requests while it runs, use :class:`LoadRunner` directly.
    """
    runner = LoadRunner(
        config, base_url=base_url, out_dir=out_dir, on_stall=on_stall, progress=progress
    )
    return await runner.run()


class _Progress:
    """A rich live line on a terminal, a plain line every 10 s elsewhere (refreshed from the
    event loop, not a thread, so it cannot disturb send timing)."""

    def __init__(self, runner: LoadRunner) -> None:
        from rich.console import Console

        self.runner = runner
        self.console = Console(stderr=True)
        self.live: Any = None
        self.task: asyncio.Task[None] | None = None
        self.interval = 0.5 if self.console.is_terminal else 10.0

    def start(self) -> None:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(
                self._render(), console=self.console, auto_refresh=False, transient=False
            )
            self.live.start()
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._update()

    def _update(self) -> None:
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
        else:
            print(self._text(), file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
            self.live.stop()

    def _text(self) -> str:
        r = self.runner
        s = r.stats
        if s is None:
            return "starting"
        elapsed = time.perf_counter() - r._start_perf
        rps = s.counts["ok"] / elapsed if elapsed > 0 else 0.0
        tps = s.output_tokens / elapsed if elapsed > 0 else 0.0
        ttft = s.ttft.mean
        target = r.config.requests
        done = f"{s.finished}/{target}" if target else f"{s.finished}"
        return (
            f"{elapsed:7.1f}s  sent {r._sent}  done {done}  in-flight {len(r._inflight)}  "
            f"ok {s.counts['ok']}  failed {s.counts['failed']}  stalled {s.counts['stalled']}  "
            f"{rps:.1f} req/s  {tps:.0f} tok/s  ttft mean "
            + (f"{ttft:.1f} ms" if ttft is not None else "-")
        )

    def _render(self) -> Any:
        from rich.text import Text

        s = self.runner.stats
        style = "bold red" if s is not None and s.counts["stalled"] else "bold"
        return Text(self._text(), style=style)
