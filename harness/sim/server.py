"""The simulated OpenAI-compatible engine (I/O): ``harness sim``.

Routes: ``POST /v1/chat/completions`` and ``/v1/completions`` (streaming with usage, or not),
``GET /health``, ``/v1/models``, ``/metrics`` (Prometheus, vLLM's metric names), ``/version``.
The engine loop and its timing are :mod:`harness.sim.engine`; the OpenAI request and answer
shapes :mod:`harness.sim.openai`; this module starts up, serves HTTP and injects the faults of
the server around the engine (``startup-hang``, ``crash``, ``http-error``, ``slow-health``).

Faults: see :mod:`harness.sim.faults`. Startup lines mimic vLLM's ("Loading weights took ...",
"Starting vLLM API server ...", "Application startup complete.") and are flushed, so startup
phase detection works on the simulator as on vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from harness import __version__
from harness.eventloop import event_loop_factory
from harness.sim.engine import Engine, SimConfig, log
from harness.sim.http import Request, Response, start_server
from harness.sim.openai import DONE, ApiError, Completion, models_listing, read_generation
from harness.sim.workers import WorkerGroup, set_process_name

__all__ = ["SimConfig", "SimServer", "log", "serve"]

_EVENT_STREAM = "text/event-stream; charset=utf-8"


def _error(status: int, message: str, kind: str) -> Response:
    return Response.json(ApiError(status, message, kind).body(), status)


class SimServer:
    """One simulated engine: engine loop, optional TP workers, HTTP front end."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = {f.kind: f for f in config.faults}
        self.engine = Engine(config, self.faults)
        self._counter = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Start up (maybe hanging, per faults), serve forever."""
        cfg = self.cfg
        engine = self.engine
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
            engine.workers = WorkerGroup.start(cfg.tp, cfg.python, mode)
            for rank, pid in enumerate(engine.workers.pids()):
                log(f"sim::Worker_TP{rank} pid={pid}")
            if hang:
                log(f"Initializing distributed environment (world size {cfg.tp})")
                await self.init_distributed_environment()
            await loop.run_in_executor(engine.executor, engine.workers.wait_for_workers_ready)
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
        engine.ready_at = time.monotonic()
        if engine.stepping:
            self._spawn(engine.step_loop())
        if "crash" in self.faults:
            loop.call_later(float(self.faults["crash"].params["at"]), self._crash)
        if cfg.stats_interval_s > 0:
            self._spawn(engine.stats_loop())
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
        if self.engine.workers is not None:
            self.engine.workers.stop()
        sys.stdout.flush()
        os._exit(int(self.faults["crash"].params["code"]))

    def close(self) -> None:
        self.engine.close()

    # ------------------------------------------------------------------ HTTP

    async def handle(self, req: Request) -> Response:
        cfg = self.cfg
        if cfg.access_log:
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
            root = cfg.model_root or cfg.model_name
            return Response.json(
                models_listing(cfg.model_name, root, cfg.max_model_len, int(time.time()))
            )
        if path == "/metrics":
            metrics = self.engine.metrics
            metrics.running.labels(cfg.model_name).set(self.engine.running)
            metrics.waiting.labels(cfg.model_name).set(self.engine.waiting)
            return Response(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/version":
            return Response.json({"version": f"harness-sim-{__version__}"})
        return _error(404, f"no route {path}", "NotFound")

    async def _generate(self, req: Request, *, chat: bool) -> Response:
        cfg = self.cfg
        err = self.faults.get("http-error")
        if err is not None and self.rng.random() < float(err.params["p"]):
            status = int(err.params["status"])
            return _error(
                status, "simulated server error (http-error fault)", "InternalServerError"
            )
        try:
            try:
                body = req.json()
            except ValueError:
                body = None
            gen = read_generation(
                body,
                chat=chat,
                served=(None, cfg.model_name, cfg.model_root),
                default_max_tokens=cfg.default_max_tokens,
                max_model_len=cfg.max_model_len,
            )
        except ApiError as exc:
            return Response.json(exc.body(), exc.status)
        self._counter += 1
        prefix = "chatcmpl" if chat else "cmpl"
        rid = f"{prefix}-sim{self._counter:08x}{self.rng.getrandbits(32):08x}"
        stall_after: int | None = None
        stall = self.faults.get("stall")
        if stall is not None and self.rng.random() < float(stall.params["p"]):
            stall_after = int(stall.params["after"])
        answer = Completion(
            rid, chat, cfg.model_name, int(time.time()), gen.prompt_tokens, gen.max_tokens
        )
        headers = {"x-request-id": rid}
        engine = self.engine
        started = time.perf_counter()
        if not gen.stream:
            tokens = engine.tokens(
                gen.max_tokens, gen.prompt_tokens, stall_after=stall_after, started=started
            )
            text = "".join([answer.token(i) async for i in tokens])
            return Response(200, answer.full_body(text), headers=headers)
        if not engine.stepping and engine.ttft_s == 0 and stall_after is None:
            # Nothing to wait for: the whole stream at once (the near-zero-cost target).
            engine.account_start(gen.prompt_tokens)
            whole = answer.whole_stream(gen.usage_wanted)
            engine.account_tokens(gen.max_tokens)
            engine.account_end(started, time.perf_counter())
            return Response(200, content_type=_EVENT_STREAM, headers=headers, chunks=[whole])
        stream = self._stream(answer, gen.usage_wanted, stall_after, started)
        return Response(200, content_type=_EVENT_STREAM, headers=headers, stream=stream)

    async def _stream(
        self, answer: Completion, usage_wanted: bool, stall_after: int | None, started: float
    ) -> AsyncIterator[bytes]:
        if answer.chat:
            yield answer.chunk("", role=True)
        tokens = self.engine.tokens(
            answer.n, answer.prompt_tokens, stall_after=stall_after, started=started
        )
        async for i in tokens:
            yield answer.token_chunk(i)
        if usage_wanted:
            yield answer.usage_chunk()
        yield DONE


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
