"""The simulated engine's loop and its injected faults (I/O: asyncio, TP worker processes).

Timing model: a request waits ``ttft_ms`` (prefill), then gets one token per engine step; the
engine steps every ``itl_ms`` while any request is running, all running requests together (a
batch). With ``--tp N`` every step is a ``collective_rpc`` to N worker processes
(:mod:`harness.sim.workers`). With ``ttft_ms = itl_ms = 0`` and no engine-level fault nothing
steps: the whole answer can be written at once.

Faults here (:mod:`harness.sim.faults`): ``stall`` (one request stops after some tokens),
``engine-stall`` (the loop stops stepping), ``worker-stall`` (one TP worker hangs inside a
step). Metrics use vLLM's names; the periodic stats line mimics vLLM's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from harness.sim.faults import Fault
from harness.sim.workers import NO_STALL, WorkerGroup


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulated server."""

    host: str = "127.0.0.1"
    port: int = 8000
    tp: int = 1
    model_name: str = "sim-model"
    model_root: str | None = None
    ttft_ms: float = 50.0
    itl_ms: float = 20.0
    max_num_seqs: int = 256
    max_model_len: int = 32768
    default_max_tokens: int = 16
    startup_s: float = 1.0
    seed: int | None = None
    faults: tuple[Fault, ...] = ()
    access_log: bool = False
    stats_interval_s: float = 10.0
    python: str = field(default_factory=lambda: sys.executable)


def log(msg: str, level: str = "INFO") -> None:
    """A vLLM-shaped log line on stdout, flushed (startup phase detection reads it)."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [sim] {msg}", flush=True)


class EngineMetrics:
    """The engine's Prometheus metrics, with vLLM's names (``/metrics``)."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self.running = Gauge(
            "vllm:num_requests_running", "Requests in the batch.", labels, registry=r
        )
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", labels, registry=r)
        self.prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r)
        self.gen = Counter("vllm:generation_tokens", "Generation tokens.", labels, registry=r)
        self.success = Counter(
            "vllm:request_success", "Finished requests.", [*labels, "finished_reason"], registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            labels,
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency.",
            labels,
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.running.labels(model).set(0)
        self.waiting.labels(model).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Engine:
    """Steps the batch, hands out tokens, injects the engine-level faults, keeps the metrics."""

    def __init__(self, config: SimConfig, faults: Mapping[str, Fault]) -> None:
        self.cfg = config
        self.faults = faults
        self.model = config.model_name
        self.metrics = EngineMetrics(config.model_name)
        self.workers: WorkerGroup | None = None
        self.stepping = (
            config.tp > 1
            or config.itl_ms > 0
            or any(k in faults for k in ("engine-stall", "worker-stall"))
        )
        self.itl_s = max(config.itl_ms, 1.0 if self.stepping else 0.0) / 1000.0
        self.ttft_s = config.ttft_ms / 1000.0
        self.ready_at: float | None = None
        self.running = 0
        self.waiting = 0
        self._step = 0
        self._step_event = asyncio.Event()
        self._have_work = asyncio.Event()
        self._waiters = 0
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="EngineCore")
        self._prompt_since = 0
        self._gen_since = 0

    def since_ready(self) -> float:
        return time.monotonic() - self.ready_at if self.ready_at is not None else 0.0

    # ------------------------------------------------------------------ the loop

    async def step_loop(self) -> None:
        """Step while requests wait for a token (every ``itl_ms``; through the workers)."""
        loop = asyncio.get_running_loop()
        engine_stall = self.faults.get("engine-stall")
        worker_stall = self.faults.get("worker-stall")
        while True:
            if self._waiters == 0:
                self._have_work.clear()
                await self._have_work.wait()
            await asyncio.sleep(self.itl_s)
            if engine_stall is not None and self.since_ready() >= float(engine_stall.params["at"]):
                log("injected engine-stall: the engine loop stops stepping", "WARNING")
                await _stalled(engine_stall.params.get("for"))
                log("engine-stall over: stepping again")
                engine_stall = None
            if self.workers is not None:
                stall_rank = NO_STALL
                if worker_stall is not None and self.since_ready() >= float(
                    worker_stall.params["at"]
                ):
                    stall_rank = int(worker_stall.params["rank"])
                    log(f"injected worker-stall on rank {stall_rank}", "WARNING")
                    worker_stall = None
                await loop.run_in_executor(
                    self.executor, self.workers.collective_rpc, self._step, stall_rank
                )
            self._step += 1
            event, self._step_event = self._step_event, asyncio.Event()
            event.set()

    async def _next_step(self) -> None:
        if not self.stepping:
            return
        event = self._step_event
        self._waiters += 1
        self._have_work.set()
        try:
            await event.wait()
        finally:
            self._waiters -= 1

    async def stats_loop(self) -> None:
        """vLLM's periodic throughput line, while there is work."""
        interval = self.cfg.stats_interval_s
        while True:
            await asyncio.sleep(interval)
            if self.running or self.waiting or self._prompt_since or self._gen_since:
                log(
                    f"Engine 000: Avg prompt throughput: {self._prompt_since / interval:.1f} "
                    f"tokens/s, Avg generation throughput: {self._gen_since / interval:.1f} "
                    f"tokens/s, Running: {self.running} reqs, Waiting: {self.waiting} reqs"
                )
                self._prompt_since = self._gen_since = 0

    # ------------------------------------------------------------------ requests

    def account_start(self, prompt_tokens: int) -> None:
        self.metrics.prompt.labels(self.model).inc(prompt_tokens)
        self._prompt_since += prompt_tokens

    def account_tokens(self, generated: int) -> None:
        self.metrics.gen.labels(self.model).inc(generated)
        self._gen_since += generated

    def account_end(self, started: float, first: float | None) -> None:
        m = self.metrics
        m.success.labels(self.model, "length").inc()
        if first is not None:
            m.ttft.labels(self.model).observe(first - started)
        m.e2e.labels(self.model).observe(time.perf_counter() - started)

    async def tokens(
        self, n: int, prompt_tokens: int, *, stall_after: int | None, started: float
    ) -> AsyncIterator[int]:
        """The request's token numbers ``0..n-1`` as the engine produces them: a slot in the
        batch, prefill, one token per step; with ``stall_after`` the request stops there (the
        ``stall`` fault)."""
        self.waiting += 1
        acquired = False
        generated = 0
        first: float | None = None
        try:
            await self._slots.acquire()
            acquired = True
            self.waiting -= 1
            self.running += 1
            self.account_start(prompt_tokens)
            if self.ttft_s > 0:
                await asyncio.sleep(self.ttft_s)
            for i in range(n):
                if stall_after is not None and i == stall_after:
                    await _stalled(self.faults["stall"].params.get("for"))
                await self._next_step()
                if first is None:
                    first = time.perf_counter()
                generated += 1
                # Counted as generated, like vLLM's counter: a long request is progress, not a
                # stall, for the watchdog's metrics rule.
                self.account_tokens(1)
                yield i
        finally:
            if acquired:
                self.running -= 1
                self._slots.release()
                self.account_end(started, first)
            else:
                self.waiting -= 1

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def _stalled(seconds: float | None) -> None:
    """A stall fault: forever (until the client goes away), or ``seconds``."""
    if seconds is None:
        await asyncio.Future()
    else:
        await asyncio.sleep(float(seconds))
