"""The simulated OpenAI-compatible engine (I/O): ``harness sim``.

Routes: ``POST /v1/chat/completions`` and ``/v1/completions`` (streaming with usage, or not),
``GET /health``, ``/v1/models``, ``/metrics`` (Prometheus, vLLM's metric names), ``/version``.

Timing model: a request waits ``ttft_ms`` (prefill), then gets one token per engine step; the
engine steps every ``itl_ms`` while any request is running, all running requests together (a
batch). With ``--tp N`` every step is a ``collective_rpc`` to N worker processes
(:mod:`harness.sim.workers`). With ``ttft_ms = itl_ms = 0`` and no engine-level fault the whole
answer is written at once: the near-zero-cost target for client benchmarks.

Faults: see :mod:`harness.sim.faults`. Startup lines mimic vLLM's ("Loading weights took ...",
"Starting vLLM API server ...", "Application startup complete.") and are flushed, so startup
phase detection works on the simulator as on vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from harness import __version__
from harness.eventloop import event_loop_factory
from harness.sim.faults import Fault
from harness.sim.http import Request, Response, start_server
from harness.sim.workers import NO_STALL, WorkerGroup, set_process_name

_WORDS_TEXT = (
    "the of and to in is was for on that with as by at from his her an which or be are this "
    "have not but had were they their one all has been more when there who will would so no"
)
_WORDS = _WORDS_TEXT.split()
_TOKENS = [" " + w for w in _WORDS]


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


class _Metrics:
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
        self.m = model
        self.running.labels(model).set(0)
        self.waiting.labels(model).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Whitespace words of every text in the request (the simulator has no tokenizer), plus a
    fixed 64 per image."""
    n = 0
    if isinstance(body.get("prompt"), str):
        n += len(body["prompt"].split())
    for msg in body.get("messages") or ():
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    n += len(part["text"].split())
                elif part.get("type") in ("image_url", "input_image", "image"):
                    n += 64
    return max(n, 1)


def _error(status: int, message: str, kind: str) -> Response:
    return Response.json(
        {"error": {"message": message, "type": kind, "param": None, "code": status}}, status
    )


class SimServer:
    """One simulated engine: engine loop, optional TP workers, HTTP front end."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.seed = seed
        self.rng = random.Random(seed)
        self.metrics = _Metrics(config.model_name)
        self._m = config.model_name
        self.faults = {f.kind: f for f in config.faults}
        self.workers: WorkerGroup | None = None
        self._stepping = (
            config.tp > 1
            or config.itl_ms > 0
            or any(k in self.faults for k in ("engine-stall", "worker-stall"))
        )
        self._itl = max(config.itl_ms, 1.0 if self._stepping else 0.0) / 1000.0
        self._ttft = config.ttft_ms / 1000.0
        self._step = 0
        self._step_event = asyncio.Event()
        self._have_work = asyncio.Event()
        self._waiters = 0
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        self._running = 0
        self._waiting = 0
        self._counter = 0
        self._ready_at: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="EngineCore")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._prompt_since = 0
        self._gen_since = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Start up (maybe hanging, per faults), serve forever."""
        cfg = self.cfg
        set_process_name("sim::APIServer")
        log(f"harness sim {__version__}: a simulated vLLM-compatible engine (seed {self.seed})")
        log(
            f"non-default args: model={cfg.model_name!r} tp={cfg.tp} ttft_ms={cfg.ttft_ms} "
            f"itl_ms={cfg.itl_ms} faults={[f.spec for f in cfg.faults]}"
        )
        hang = "startup-hang" in self.faults and self.rng.random() < float(
            self.faults["startup-hang"].params["p"]
        )
        if hang:
            # Said in the log so that a test can count injected hangs without the watchdog.
            log("startup-hang fault: this start will never become healthy", "WARNING")
        loop = asyncio.get_running_loop()
        if cfg.tp > 1:
            mode = (
                str(self.faults["worker-stall"].params["mode"])
                if "worker-stall" in self.faults
                else "spin"
            )
            log(f"Starting {cfg.tp} worker processes (tensor parallel)")
            self.workers = WorkerGroup.start(cfg.tp, cfg.python, mode)
            for rank, pid in enumerate(self.workers.pids()):
                log(f"sim::Worker_TP{rank} pid={pid}")
            if hang:
                log(f"Initializing distributed environment (world size {cfg.tp})")
                await self.init_distributed_environment()
            await loop.run_in_executor(self._executor, self.workers.wait_for_workers_ready)
        elif hang:
            log("Initializing distributed environment (world size 1)")
            await self.init_distributed_environment()
        await asyncio.sleep(cfg.startup_s)
        log(f"Loading weights took {cfg.startup_s:.2f} seconds")
        log(f"Starting vLLM API server 0 on http://{cfg.host}:{cfg.port}")
        server = await start_server(self.handle, cfg.host, cfg.port)
        print(f"INFO:     Started server process [{os.getpid()}]", flush=True)
        print("INFO:     Waiting for application startup.", flush=True)
        print("INFO:     Application startup complete.", flush=True)
        self._ready_at = time.monotonic()
        if self._stepping:
            self._spawn(self._step_loop())
        if "crash" in self.faults:
            loop.call_later(float(self.faults["crash"].params["at"]), self._crash)
        if cfg.stats_interval_s > 0:
            self._spawn(self._stats_loop())
        async with server:
            await server.serve_forever()

    async def init_distributed_environment(self) -> None:
        """The startup-hang fault: never returns (like a stuck NCCL rendezvous)."""
        await asyncio.Future()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _crash(self) -> None:
        log("EngineCore encountered a fatal error (injected crash fault).", "ERROR")
        log("RuntimeError: simulated engine crash", "ERROR")
        if self.workers is not None:
            self.workers.stop()
        sys.stdout.flush()
        os._exit(int(self.faults["crash"].params["code"]))

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _since_ready(self) -> float:
        return time.monotonic() - self._ready_at if self._ready_at is not None else 0.0

    # ------------------------------------------------------------------ engine loop

    async def _step_loop(self) -> None:
        loop = asyncio.get_running_loop()
        engine_stall = self.faults.get("engine-stall")
        worker_stall = self.faults.get("worker-stall")
        while True:
            if self._waiters == 0:
                self._have_work.clear()
                await self._have_work.wait()
            await asyncio.sleep(self._itl)
            if engine_stall is not None and self._since_ready() >= float(engine_stall.params["at"]):
                log("injected engine-stall: the engine loop stops stepping", "WARNING")
                await self._engine_stalled(engine_stall.params.get("for"))
                engine_stall = None
            if self.workers is not None:
                stall_rank = NO_STALL
                if worker_stall is not None and self._since_ready() >= float(
                    worker_stall.params["at"]
                ):
                    stall_rank = int(worker_stall.params["rank"])
                    log(f"injected worker-stall on rank {stall_rank}", "WARNING")
                    worker_stall = None
                await loop.run_in_executor(
                    self._executor, self.workers.collective_rpc, self._step, stall_rank
                )
            self._step += 1
            event, self._step_event = self._step_event, asyncio.Event()
            event.set()

    async def _engine_stalled(self, seconds: float | None) -> None:
        if seconds is None:
            await asyncio.Future()
        else:
            await asyncio.sleep(seconds)
            log("engine-stall over: stepping again")

    async def _next_step(self) -> None:
        if not self._stepping:
            return
        event = self._step_event
        self._waiters += 1
        self._have_work.set()
        try:
            await event.wait()
        finally:
            self._waiters -= 1

    async def _stats_loop(self) -> None:
        interval = self.cfg.stats_interval_s
        while True:
            await asyncio.sleep(interval)
            if self._running or self._waiting or self._prompt_since or self._gen_since:
                log(
                    f"Engine 000: Avg prompt throughput: {self._prompt_since / interval:.1f} "
                    f"tokens/s, Avg generation throughput: {self._gen_since / interval:.1f} "
                    f"tokens/s, Running: {self._running} reqs, Waiting: {self._waiting} reqs"
                )
                self._prompt_since = self._gen_since = 0

    # ------------------------------------------------------------------ HTTP

    async def handle(self, req: Request) -> Response:
        if self.cfg.access_log:
            log(f'"{req.method} {req.path} HTTP/1.1"')
        path = req.path
        if path == "/health":
            slow = self.faults.get("slow-health")
            if slow is not None:
                await asyncio.sleep(float(slow.params["ms"]) / 1000.0)
            return Response(200, b"", "text/plain")
        if path in ("/v1/chat/completions", "/v1/completions"):
            if req.method != "POST":
                return _error(405, "use POST", "MethodNotAllowed")
            return await self._generate(req, chat=path.endswith("chat/completions"))
        if path == "/v1/models":
            return Response.json(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self._m,
                            "object": "model",
                            "created": int(time.time()),
                            "owned_by": "harness-sim",
                            "root": self.cfg.model_root or self._m,
                            "max_model_len": self.cfg.max_model_len,
                        }
                    ],
                }
            )
        if path == "/metrics":
            self.metrics.running.labels(self._m).set(self._running)
            self.metrics.waiting.labels(self._m).set(self._waiting)
            return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/version":
            return Response.json({"version": f"harness-sim-{__version__}"})
        return _error(404, f"no route {path}", "NotFound")

    async def _generate(self, req: Request, *, chat: bool) -> Response:
        err = self.faults.get("http-error")
        if err is not None and self.rng.random() < float(err.params["p"]):
            status = int(err.params["status"])
            return _error(
                status, "simulated server error (http-error fault)", "InternalServerError"
            )
        try:
            body = req.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return _error(400, "request body is not a JSON object", "BadRequestError")
        model = body.get("model")
        if model not in (None, self._m, self.cfg.model_root):
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if chat and not isinstance(body.get("messages"), list):
            return _error(400, "messages is required", "BadRequestError")
        if not chat and not isinstance(body.get("prompt"), str | list):
            return _error(400, "prompt is required", "BadRequestError")
        raw_n = body.get("max_completion_tokens", body.get("max_tokens"))
        n = self.cfg.default_max_tokens if raw_n is None else raw_n
        if not isinstance(n, int) or n < 1:
            return _error(400, "max_tokens must be a positive integer", "BadRequestError")
        prompt_tokens = count_prompt_tokens(body)
        if prompt_tokens + n > self.cfg.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.cfg.max_model_len} tokens.",
                "BadRequestError",
            )
        self._counter += 1
        prefix = "chatcmpl" if chat else "cmpl"
        rid = f"{prefix}-sim{self._counter:08x}{self.rng.getrandbits(32):08x}"
        stall_after: int | None = None
        stall = self.faults.get("stall")
        if stall is not None and self.rng.random() < float(stall.params["p"]):
            stall_after = int(stall.params["after"])
        stream = bool(body.get("stream"))
        opts = body.get("stream_options")
        usage_wanted = isinstance(opts, dict) and bool(opts.get("include_usage"))
        job = _Job(self, rid, chat, n, prompt_tokens, stall_after, usage_wanted)
        headers = {"x-request-id": rid}
        if stream:
            if not self._stepping and self._ttft == 0 and stall_after is None:
                return Response(
                    200,
                    content_type="text/event-stream; charset=utf-8",
                    headers=headers,
                    chunks=job.all_chunks(),
                )
            return Response(
                200,
                content_type="text/event-stream; charset=utf-8",
                headers=headers,
                stream=job.stream(),
            )
        return Response(200, job.full_body(await job.collect()), headers=headers)


class _Job:
    """One generation request."""

    def __init__(
        self,
        server: SimServer,
        rid: str,
        chat: bool,
        n: int,
        prompt_tokens: int,
        stall_after: int | None,
        usage_wanted: bool,
    ) -> None:
        self.s = server
        self.rid = rid
        self.chat = chat
        self.n = n
        self.prompt_tokens = prompt_tokens
        self.stall_after = stall_after
        self.usage_wanted = usage_wanted
        self.created = int(time.time())
        self.t0 = time.perf_counter()
        self.text: list[str] = []

    def _chunk(self, text: str | None, finish: str | None = None, role: bool = False) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            obj = {
                "id": self.rid,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.s._m,
                "choices": [choice],
            }
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = {
                "id": self.rid,
                "object": "text_completion",
                "created": self.created,
                "model": self.s._m,
                "choices": [choice],
            }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.n,
            "total_tokens": self.prompt_tokens + self.n,
        }

    def _usage_chunk(self) -> bytes:
        obj: dict[str, Any] = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.s._m,
            "choices": [],
            "usage": self._usage(),
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def _token(self, i: int) -> str:
        return _TOKENS[(i * 7 + len(self.rid)) % len(_TOKENS)]

    def _account_start(self) -> None:
        m = self.s.metrics
        m.prompt.labels(self.s._m).inc(self.prompt_tokens)
        self.s._prompt_since += self.prompt_tokens

    def _account_tokens(self, generated: int) -> None:
        self.s.metrics.gen.labels(self.s._m).inc(generated)
        self.s._gen_since += generated

    def _account_end(self, generated: int, first: float | None) -> None:
        m = self.s.metrics
        name = self.s._m
        m.success.labels(name, "length").inc()
        now = time.perf_counter()
        if first is not None:
            m.ttft.labels(name).observe(first - self.t0)
        m.e2e.labels(name).observe(now - self.t0)

    def all_chunks(self) -> list[bytes]:
        """The whole stream at once (no delays, no faults)."""
        self._account_start()
        out = []
        if self.chat:
            out.append(self._chunk("", role=True))
        for i in range(self.n):
            out.append(self._chunk(self._token(i), "length" if i == self.n - 1 else None))
        if self.usage_wanted:
            out.append(self._usage_chunk())
        out.append(b"data: [DONE]\n\n")
        self._account_tokens(self.n)
        self._account_end(self.n, time.perf_counter())
        return [b"".join(out)]

    async def _tokens(self) -> AsyncIterator[str]:
        s = self.s
        s._waiting += 1
        acquired = False
        generated = 0
        first: float | None = None
        try:
            await s._slots.acquire()
            acquired = True
            s._waiting -= 1
            s._running += 1
            self._account_start()
            if s._ttft > 0:
                await asyncio.sleep(s._ttft)
            for i in range(self.n):
                if self.stall_after is not None and i == self.stall_after:
                    await self._stalled()
                await s._next_step()
                if first is None:
                    first = time.perf_counter()
                generated += 1
                # Counted as generated, like vLLM's counter: a long request is progress, not a
                # stall, for the watchdog's metrics rule.
                self._account_tokens(1)
                yield self._token(i)
        finally:
            if acquired:
                s._running -= 1
                s._slots.release()
                self._account_end(generated, first)
            else:
                s._waiting -= 1

    async def _stalled(self) -> None:
        stall = self.s.faults["stall"]
        seconds = stall.params.get("for")
        if seconds is None:
            await asyncio.Future()  # until the client goes away
        else:
            await asyncio.sleep(float(seconds))

    async def stream(self) -> AsyncIterator[bytes]:
        if self.chat:
            yield self._chunk("", role=True)
        i = 0
        async for token in self._tokens():
            yield self._chunk(token, "length" if i == self.n - 1 else None)
            i += 1
        if self.usage_wanted:
            yield self._usage_chunk()
        yield b"data: [DONE]\n\n"

    async def collect(self) -> str:
        return "".join([t async for t in self._tokens()])

    def full_body(self, text: str) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
            obj = {
                "id": self.rid,
                "object": "chat.completion",
                "created": self.created,
                "model": self.s._m,
                "choices": [choice],
                "usage": self._usage(),
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = {
                "id": self.rid,
                "object": "text_completion",
                "created": self.created,
                "model": self.s._m,
                "choices": [choice],
                "usage": self._usage(),
            }
        return json.dumps(obj, separators=(",", ":")).encode()


def serve(config: SimConfig) -> None:
    """Run the simulator until killed (uvloop when importable)."""

    async def main() -> None:
        server = SimServer(config)
        try:
            await server.run()
        finally:
            server.close()

    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=event_loop_factory()) as r,
    ):
        r.run(main())
