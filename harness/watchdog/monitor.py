"""The watcher ``harness serve`` runs once the server is healthy (I/O).

:func:`watch_server` ticks about once a second: it polls the server, samples its processes
(psutil), scrapes ``/metrics``, checks ``/health`` and keeps a canary request in flight from a
background thread. The pure rules in :mod:`harness.watchdog.rules` turn those observations into
verdicts; the first verdict of an episode triggers
:func:`~harness.watchdog.capture.capture_incident` and then ``on_hang`` (keep | stop |
restart) decides what happens to the server.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil

from harness.console import Console
from harness.runtime.base import ServerHandle
from harness.spec import LaunchSpec, WatchSettings
from harness.watchdog.capture import CaptureOptions, Incident, capture_incident
from harness.watchdog.probes import PS_STATE
from harness.watchdog.pyspy import ContainerExec
from harness.watchdog.rules import (
    CanaryProbe,
    ProcSample,
    ProgressTracker,
    SignatureTracker,
    Verdict,
    canary_verdict,
    crash_verdict,
    health_verdict,
    parse_metrics,
    primary,
    request_stall_verdicts,
    startup_verdict,
)
from harness.watchdog.summary import role_name

# Exit codes a deliberate stop leaves (SIGTERM/SIGINT as Popen and shells report them).
_CLEAN_EXITS = frozenset({0, -15, 143, -2, 130})

CANARY_PROMPT = "Hello"


class Canary(threading.Thread):
    """Keeps one tiny streamed completion in flight every ``interval_s`` seconds."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        interval_s: float,
        deadline_s: float,
        api_key: str | None = None,
    ) -> None:
        super().__init__(name="harness-canary", daemon=True)
        self.url = base_url.rstrip("/") + "/v1/completions"
        # A server started with an API key answers 401 to a canary without it: the canary
        # would never see a token, and an error is not a stall, so the rule would go blind.
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.payload: dict[str, Any] = {
            "model": model,
            "prompt": CANARY_PROMPT,
            "max_tokens": 2,
            "stream": True,
            "temperature": 0.0,
        }
        self.interval_s = interval_s
        self.deadline_s = deadline_s
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._probe: CanaryProbe | None = None
        self.sent = 0

    @property
    def probe(self) -> CanaryProbe | None:
        with self._lock:
            return self._probe

    def _set(self, probe: CanaryProbe) -> None:
        with self._lock:
            self._probe = probe

    def run(self) -> None:
        # A stalled canary is the evidence, so the read timeout is long; it is still finite.
        read = max(60.0, self.deadline_s * 4)
        timeout = httpx.Timeout(connect=5.0, read=read, write=5.0, pool=5.0)
        with httpx.Client(timeout=timeout, headers=self._headers) as client:
            while not self.stop_event.is_set():
                probe = CanaryProbe(started_at=time.monotonic())
                self._set(probe)
                self.sent += 1
                try:
                    with client.stream("POST", self.url, json=self.payload) as resp:
                        if resp.status_code != 200:
                            resp.read()
                            raise httpx.HTTPStatusError(
                                f"HTTP {resp.status_code}", request=resp.request, response=resp
                            )
                        for line in resp.iter_lines():
                            if self.stop_event.is_set():
                                break
                            data = line.startswith("data:") and "[DONE]" not in line
                            if data and probe.first_token_at is None:
                                probe = replace(probe, first_token_at=time.monotonic())
                                self._set(probe)
                    self._set(replace(probe, finished_at=time.monotonic()))
                except (httpx.HTTPError, OSError) as exc:
                    self._set(
                        replace(
                            probe,
                            finished_at=time.monotonic(),
                            error=f"{type(exc).__name__}: {exc}"[:200],
                        )
                    )
                self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()


@dataclass
class _Observer:
    """Samples the server's processes; keeps psutil objects so CPU% spans ticks."""

    procs: dict[int, psutil.Process] = field(default_factory=dict)

    def sample(self, pids: list[int]) -> list[ProcSample]:
        out: list[ProcSample] = []
        for pid in pids:
            try:
                p = self.procs.get(pid) or psutil.Process(pid)
                first = pid not in self.procs
                self.procs[pid] = p
                with p.oneshot():
                    cpu = p.cpu_percent(None)
                    state = PS_STATE.get(p.status(), "?")
                    name = role_name(p.name(), p.cmdline())
                    threads = p.num_threads()
                out.append(ProcSample(pid, name, state, None if first else cpu, threads))
            except (psutil.Error, OSError):
                self.procs.pop(pid, None)
        return out


@dataclass
class _JsonlTail:
    """New complete lines of a JSONL file that other processes append to."""

    path: Path
    offset: int = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out: list[dict[str, Any]] = []
        for line in data[: end + 1].splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out


def _get(client: httpx.Client, url: str) -> httpx.Response | None:
    try:
        return client.get(url)
    except httpx.HTTPError:
        return None


def watch_server(
    handle: ServerHandle,
    settings: WatchSettings,
    *,
    console: Console | None = None,
    stop_event: threading.Event | None = None,
    restart: Callable[[], ServerHandle] | None = None,
    tick_s: float = 0.5,
    capture_options: CaptureOptions | None = None,
    on_incident: Callable[[Incident], None] | None = None,
) -> int:
    """Watch a healthy server until it exits, ``stop_event`` is set, or a hang is handled.

    Rules: canary, engine stall (``/metrics`` counters flat with requests in flight), health,
    request stalls recorded by ``harness load --run`` in ``requests.jsonl``, process signature
    (T/D states, a lone spinner), crash. The first verdict of an episode writes one incident
    bundle; ``settings.on_hang`` then keeps the server (and re-arms once it recovers), stops it,
    or restarts it through ``restart`` (stop when none is given).

    Returns the exit code for the command: 0 when the watch ended without an incident (stop
    event, clean shutdown), 1 when a hang or crash was found.
    """
    stop_event = stop_event or threading.Event()
    stall_s = settings.stall_after_s
    found = False
    while True:
        outcome, incidents = _watch_one(
            handle, settings, stall_s, console, stop_event, tick_s, capture_options, on_incident
        )
        found = found or incidents > 0
        if outcome == "stopped":
            return 1 if found else 0
        if outcome == "crash":
            return 1
        if outcome == "hang-stop":
            return 1
        # hang-restart
        if restart is None:
            handle.stop()
            return 1
        handle.stop()
        if console is not None:
            console.print("[yellow]restarting the server after the hang[/]")
        handle = restart()


def _watch_one(
    handle: ServerHandle,
    settings: WatchSettings,
    stall_s: float,
    console: Console | None,
    stop_event: threading.Event,
    tick_s: float,
    capture_options: CaptureOptions | None,
    on_incident: Callable[[Incident], None] | None,
) -> tuple[str, int]:
    spec = handle.spec
    run = handle.run
    container_exec: ContainerExec | None = getattr(handle, "exec_in_container", None)
    canary_deadline = settings.canary_deadline_s or stall_s
    canary = Canary(
        spec.base_url,
        spec.served_model_name,
        interval_s=settings.canary_interval_s,
        deadline_s=canary_deadline,
        api_key=_api_key(spec),
    )
    canary.start()
    progress = ProgressTracker(settings.engine_stall_s or stall_s)
    signature = SignatureTracker(persist_s=stall_s)
    observer = _Observer()
    requests_tail = _JsonlTail(run.requests)
    with contextlib.suppress(OSError):
        requests_tail.offset = run.requests.stat().st_size  # only stalls from now on
    last_health_ok = time.monotonic()
    health_ok: bool | None = None
    armed = True
    incidents = 0
    incident_at = 0.0
    client = httpx.Client(timeout=httpx.Timeout(1.5))

    def file_incident(verdicts: list[Verdict], count: int) -> None:
        """Capture the bundle while the hang is live; state.json names the newest."""
        incident = _record(
            handle, primary(verdicts), verdicts, console, capture_options, container_exec,
            canary, on_incident,
        )  # fmt: skip
        run.write_state(watchdog={"incidents": count, "last": str(incident.path)})

    if console is not None:
        console.print(
            f"[green]watchdog on[/]: stall after {stall_s:g} s, canary every "
            f"{settings.canary_interval_s:g} s, on hang: {settings.on_hang}"
        )
    try:
        while not stop_event.is_set():
            now = time.monotonic()
            code = handle.poll()
            if code is not None:
                if code in _CLEAN_EXITS or stop_event.is_set():
                    return "stopped", incidents
                crash = crash_verdict(code)
                assert crash is not None
                _record(
                    handle, crash, [], console, capture_options, container_exec, canary, on_incident
                )
                return "crash", incidents + 1
            pids = handle.pids()
            samples = observer.sample(pids)
            resp = _get(client, spec.health_url)
            health_ok = resp is not None and resp.status_code == 200
            if health_ok:
                last_health_ok = now
            verdicts: list[Verdict] = []
            mresp = _get(client, spec.base_url.rstrip("/") + "/metrics")
            if mresp is not None and mresp.status_code == 200:
                with contextlib.suppress(ValueError):
                    v = progress.update(now, parse_metrics(mresp.text))
                    if v is not None:
                        verdicts.append(v)
            probe = canary.probe
            v = canary_verdict(probe, now=now, deadline_s=canary_deadline, health_ok=health_ok)
            if v is not None:
                verdicts.append(v)
            v = health_verdict(
                now=now, last_ok_at=last_health_ok, stall_after_s=stall_s, alive=bool(pids)
            )
            if v is not None:
                verdicts.append(v)
            verdicts += request_stall_verdicts(requests_tail.read())
            no_progress = progress.stalled_for(now) >= stall_s and not progress.idle
            verdicts += signature.update(now, samples, no_progress=no_progress)

            # Recovered: a token arrived (canary) or the counters moved after the incident.
            recovered = not verdicts and (
                (probe is not None and (probe.first_token_at or 0.0) > incident_at)
                or (progress.last_change_at or 0.0) > incident_at
            )
            if verdicts and armed:
                armed = False
                incident_at = time.monotonic()
                incidents += 1
                file_incident(verdicts, incidents)
                if settings.on_hang == "stop":
                    handle.stop()
                    return "hang-stop", incidents
                if settings.on_hang == "restart":
                    return "hang-restart", incidents
                if console is not None:
                    console.print(
                        "[yellow]server kept running (--on-hang keep); the watchdog "
                        "re-arms when it recovers[/]"
                    )
            elif not armed and recovered:
                armed = True
                if console is not None:
                    console.print("[green]server recovered: tokens flow again[/]")
            stop_event.wait(max(0.0, tick_s - (time.monotonic() - now)))
        # A load that ends on a stall (its stall timeout ends the request, the load is over, the
        # caller stops the watch) records it after this loop's last look: one more look, so
        # that stall is still an incident captured while the server is hung (measured: a soak
        # whose last injected stall came within a tick of its end lost it, 3 incidents for 4).
        last = request_stall_verdicts(requests_tail.read())
        if last and armed and handle.poll() is None:
            incidents += 1
            file_incident(last, incidents)
            if settings.on_hang in ("stop", "restart"):
                handle.stop()
                return "hang-stop", incidents
        return "stopped", incidents
    finally:
        canary.stop()
        client.close()


def _api_key(spec: LaunchSpec) -> str | None:
    """The key the server was started with, when the plan passed one (vLLM: VLLM_API_KEY);
    a value masked in a re-read launch_spec.json is no key."""
    from harness.redact import MASK

    value = spec.env.get("VLLM_API_KEY")
    return value if value and value != MASK else None


def _record(
    handle: ServerHandle,
    verdict: Verdict,
    verdicts: list[Verdict],
    console: Console | None,
    capture_options: CaptureOptions | None,
    container_exec: ContainerExec | None,
    canary: Canary,
    on_incident: Callable[[Incident], None] | None,
) -> Incident:
    also = [v for v in verdicts if v is not verdict]
    if handle.spec.nodes:
        incident = _capture_nodes(handle, verdict, also, capture_options, console)
        if on_incident is not None:
            on_incident(incident)
        return incident
    inflight = [{"source": "canary", "url": canary.url, "payload": canary.payload}]
    inflight += _load_inflight(handle.run.path)
    incident = capture_incident(
        handle.run,
        pids=handle.pids(),
        verdict=verdict,
        also=also,
        spec=handle.spec,
        inflight=inflight,
        container_exec=container_exec,
        options=capture_options,
        console=console,
    )
    if on_incident is not None:
        on_incident(incident)
    return incident


def _load_inflight(run_path: Path) -> list[dict[str, Any]]:
    """In-flight requests the load generator publishes (``inflight.json`` in the run dir;
    large bodies in ``inflight.d/``, inlined here; nothing when the load that wrote it is gone)."""
    from harness.load.inflight import read_inflight

    return read_inflight(run_path)


def capture_startup_hang(
    handle: ServerHandle,
    verdict: Verdict,
    *,
    console: Console | None = None,
    capture_options: CaptureOptions | None = None,
) -> Incident:
    """Capture a server that did not become healthy (call after :func:`startup_verdict` fired)."""
    if handle.spec.nodes:
        return _capture_nodes(handle, verdict, (), capture_options, console)
    return capture_incident(
        handle.run,
        pids=handle.pids(),
        verdict=verdict,
        spec=handle.spec,
        container_exec=getattr(handle, "exec_in_container", None),
        options=capture_options,
        console=console,
    )


def _capture_nodes(
    handle: ServerHandle,
    verdict: Verdict,
    also: Sequence[Verdict],
    options: CaptureOptions | None,
    console: Console | None,
) -> Incident:
    """A multi-node server's processes are on its nodes: captured over ssh."""
    from harness.watchdog.nodecapture import capture_nodes_incident

    return capture_nodes_incident(
        handle.run, handle.spec, verdict, also=also, options=options, console=console
    )


__all__ = ["Canary", "capture_startup_hang", "startup_verdict", "watch_server"]
