"""Detection rules: pure functions and small trackers over observations -> verdicts.

Nothing here does I/O or reads a clock: every observation carries the ``now`` it was taken at
(``time.monotonic()`` seconds from the caller), so the rules are deterministic and unit-tested
with plain numbers. The I/O side (:mod:`harness.watchdog.monitor`,
:mod:`harness.watchdog.command`) gathers observations and acts on verdicts.

Kinds (the ``kind`` of an incident, DESIGN.md):

========================  ==============================================================
``engine-stall``          the engine stopped producing tokens (canary, metrics, health)
``request-stall``         a client request got no new token for ``stall_after`` seconds
``startup-hang``          not healthy before the deadline, or the log went silent
``process-signature``     a process stopped (T), stuck in D, or spinning while peers sleep;
                          one GPU busy while the others idle
``crash``                 the server exited
``output-stall``          ``harness watch``: no output line / heartbeat for ``stall_after``
``manual``                ``harness dump`` on demand
========================  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KINDS = (
    "engine-stall",
    "request-stall",
    "startup-hang",
    "process-signature",
    "crash",
    "output-stall",
    "manual",
)

# When several rules fire in the same tick, the incident is named after the first of these.
_PRIORITY = {
    "crash": 0,
    "engine-stall": 1,
    "request-stall": 2,
    "output-stall": 3,
    "startup-hang": 4,
    "process-signature": 5,
    "manual": 6,
}

# Process states (``/proc/<pid>/stat`` letters) that mean "not making progress on its own".
STOPPED_STATES = frozenset({"T", "t"})
UNINTERRUPTIBLE_STATES = frozenset({"D"})


@dataclass(frozen=True)
class Verdict:
    """One rule fired: ``kind`` names the incident, ``rule`` the evidence."""

    kind: str
    rule: str
    detail: str
    pids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "detail": self.detail,
            "pids": list(self.pids),
        }


def primary(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict an incident is named after (crash before stalls before signatures)."""
    if not verdicts:
        raise ValueError("no verdicts")
    return min(verdicts, key=lambda v: _PRIORITY.get(v.kind, 99))


@dataclass(frozen=True)
class ProcSample:
    """One process as seen at one moment (from psutil, ``ps`` on a remote node, ...)."""

    pid: int
    name: str
    state: str
    cpu_percent: float | None = None
    threads: int | None = None
    cmdline: str = ""
    ppid: int | None = None
    host: str | None = None


@dataclass(frozen=True)
class GpuSample:
    """One GPU as NVML reports it."""

    index: int
    util_percent: float
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None


# --------------------------------------------------------------------------------------------
# Silence: harness watch (output lines / heartbeat) and startup log silence


def silence_verdict(
    *,
    now: float,
    last_activity_at: float,
    stall_after_s: float,
    what: str = "output",
    kind: str = "output-stall",
) -> Verdict | None:
    """``what`` (output, heartbeat, log) has been silent for at least ``stall_after_s``."""
    silent = now - last_activity_at
    if silent < stall_after_s:
        return None
    return Verdict(
        kind, f"{what}-silence", f"no new {what} for {silent:.0f} s (limit {stall_after_s:g} s)"
    )


# --------------------------------------------------------------------------------------------
# Startup


def startup_verdict(
    *,
    now: float,
    started_at: float,
    deadline_s: float,
    healthy: bool,
    exit_code: int | None = None,
    last_log_at: float | None = None,
    log_silence_s: float | None = None,
) -> Verdict | None:
    """Decide whether a starting server has failed to start.

    Call it every poll of the startup wait. Returns ``None`` while the start is still fine
    (or once healthy), a ``crash`` verdict when the server exited, and a ``startup-hang``
    verdict when the deadline passed or no new log line arrived for ``log_silence_s``.
    ``last_log_at`` is when server.log last grew (``started_at`` when unknown).
    """
    if healthy:
        return None
    if exit_code is not None:
        return Verdict("crash", "exit", f"server exited with code {exit_code} during startup")
    waited = now - started_at
    if waited >= deadline_s:
        return Verdict(
            "startup-hang",
            "health-deadline",
            f"not healthy after {waited:.0f} s (deadline {deadline_s:g} s)",
        )
    if log_silence_s is not None:
        last = last_log_at if last_log_at is not None else started_at
        if now - last >= log_silence_s:
            return Verdict(
                "startup-hang",
                "log-silence",
                f"no new log line for {now - last:.0f} s during startup "
                f"(limit {log_silence_s:g} s)",
            )
    return None


# --------------------------------------------------------------------------------------------
# Canary


@dataclass(frozen=True)
class CanaryProbe:
    """The state of the current canary request (a tiny streamed completion)."""

    started_at: float
    first_token_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


def canary_verdict(
    probe: CanaryProbe | None, *, now: float, deadline_s: float, health_ok: bool | None
) -> Verdict | None:
    """No token before the deadline while ``/health`` still answers = engine stall.

    With a TP worker stopped, vLLM's ``/health`` keeps answering 200; only a request that
    needs the workers shows the hang. When health itself fails, the canary stays silent here
    (:func:`health_verdict` covers an unresponsive server).
    """
    if probe is None or probe.first_token_at is not None:
        return None
    if probe.error is not None and probe.finished_at is not None:
        return None
    waited = now - probe.started_at
    if waited < deadline_s or health_ok is False:
        return None
    return Verdict(
        "engine-stall",
        "canary",
        f"canary request got no token in {waited:.0f} s (deadline {deadline_s:g} s) "
        f"while /health answers",
    )


def health_verdict(
    *, now: float, last_ok_at: float, stall_after_s: float, alive: bool
) -> Verdict | None:
    """The server's processes live but ``/health`` has not answered for ``stall_after_s``."""
    if not alive or now - last_ok_at < stall_after_s:
        return None
    return Verdict(
        "engine-stall",
        "health",
        f"/health has not answered for {now - last_ok_at:.0f} s while the server runs",
    )


# --------------------------------------------------------------------------------------------
# Engine metrics (Prometheus /metrics)

# vLLM (v1/metrics/loggers.py): counters are exposed with a ``_total`` suffix; the simulated
# engine uses the same names. LMDeploy's names are accepted as well.
GENERATION_COUNTERS = ("vllm:generation_tokens", "lmdeploy:generation_tokens")
PROMPT_COUNTERS = ("vllm:prompt_tokens", "lmdeploy:prompt_tokens")
RUNNING_GAUGES = ("vllm:num_requests_running", "lmdeploy:num_requests_running")
WAITING_GAUGES = ("vllm:num_requests_waiting", "lmdeploy:num_requests_waiting")


@dataclass(frozen=True)
class MetricsSnapshot:
    """The few numbers the engine-stall rule needs, summed over label sets."""

    generation_tokens: float | None
    prompt_tokens: float | None
    running: float | None
    waiting: float | None

    @property
    def progress(self) -> float | None:
        """A number that grows whenever the engine does useful work."""
        parts = [x for x in (self.generation_tokens, self.prompt_tokens) if x is not None]
        return sum(parts) if parts else None

    @property
    def in_flight(self) -> float | None:
        parts = [x for x in (self.running, self.waiting) if x is not None]
        return sum(parts) if parts else None


def parse_metrics(text: str) -> MetricsSnapshot:
    """Parse a Prometheus text exposition (``GET /metrics``) with prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            # Counters: the family drops ``_total``; samples keep it. Normalise to the family.
            if name.endswith("_total"):
                name = name[: -len("_total")]
            elif name.endswith("_created"):
                continue
            value = float(sample.value)
            if math.isnan(value):
                continue
            totals[name] = totals.get(name, 0.0) + value

    def pick(names: Iterable[str]) -> float | None:
        found = [totals[n] for n in names if n in totals]
        return sum(found) if found else None

    return MetricsSnapshot(
        generation_tokens=pick(GENERATION_COUNTERS),
        prompt_tokens=pick(PROMPT_COUNTERS),
        running=pick(RUNNING_GAUGES),
        waiting=pick(WAITING_GAUGES),
    )


@dataclass
class ProgressTracker:
    """Engine stall: requests in flight but the token counters do not move.

    Feed one :class:`MetricsSnapshot` per scrape; :meth:`update` returns a verdict once the
    counters have been flat for ``stall_after_s`` with requests in flight the whole time.
    """

    stall_after_s: float
    last_progress: float | None = None
    last_change_at: float | None = None
    idle: bool = True

    def update(self, now: float, snap: MetricsSnapshot) -> Verdict | None:
        progress = snap.progress
        in_flight = snap.in_flight or 0.0
        if progress is None:
            return None
        if self.last_progress is None or progress != self.last_progress or in_flight <= 0:
            # Moving, or nothing to do: the clock restarts.
            self.last_progress = progress
            self.last_change_at = now
            self.idle = in_flight <= 0
            return None
        assert self.last_change_at is not None
        flat = now - self.last_change_at
        if flat < self.stall_after_s:
            return None
        return Verdict(
            "engine-stall",
            "metrics",
            f"{in_flight:g} request(s) in flight but the token counters have not moved "
            f"for {flat:.0f} s (limit {self.stall_after_s:g} s)",
        )

    def stalled_for(self, now: float) -> float:
        """Seconds since the counters last moved (0 when unknown)."""
        return 0.0 if self.last_change_at is None else now - self.last_change_at


# --------------------------------------------------------------------------------------------
# Request stalls reported by the load generator


def request_stall_verdicts(records: Iterable[Mapping[str, Any]]) -> list[Verdict]:
    """Stall records from ``requests.jsonl`` (``status == "stalled"``) -> request-stall verdicts."""
    out: list[Verdict] = []
    for rec in records:
        if rec.get("status") != "stalled":
            continue
        rid = rec.get("request_id") or rec.get("id") or "?"
        tokens = rec.get("output_tokens")
        out.append(
            Verdict(
                "request-stall",
                "load",
                f"request {rid} stalled after {tokens if tokens is not None else '?'} token(s)",
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Process signature


@dataclass
class SignatureTracker:
    """Per-process state across samples: stopped (T), uninterruptible (D), spinning alone.

    A state must persist for ``persist_s`` before it fires. Spinning (one process at high CPU
    while every peer sleeps) and GPU imbalance only fire while ``no_progress`` is true,
    because a busy process is normal while the engine works.
    """

    persist_s: float
    spin_cpu: float = 80.0
    idle_cpu: float = 10.0
    gpu_busy: float = 90.0
    gpu_idle: float = 10.0
    since: dict[tuple[int, str], float] = field(default_factory=dict)

    def _persisted(self, key: tuple[int, str], active: bool, now: float) -> float | None:
        if not active:
            self.since.pop(key, None)
            return None
        start = self.since.setdefault(key, now)
        return now - start

    def update(
        self,
        now: float,
        samples: Sequence[ProcSample],
        *,
        gpus: Sequence[GpuSample] = (),
        no_progress: bool = False,
    ) -> list[Verdict]:
        verdicts: list[Verdict] = []
        live = {s.pid for s in samples}
        for key in [k for k in self.since if k[0] >= 0 and k[0] not in live]:
            del self.since[key]
        for s in samples:
            for states, tag, label in (
                (STOPPED_STATES, "T", "stopped (state T)"),
                (UNINTERRUPTIBLE_STATES, "D", "in uninterruptible sleep (state D)"),
            ):
                held = self._persisted((s.pid, tag), s.state in states, now)
                if held is not None and held >= self.persist_s:
                    verdicts.append(
                        Verdict(
                            "process-signature",
                            "process-state",
                            f"{s.name} (pid {s.pid}) {label} for {held:.0f} s",
                            (s.pid,),
                        )
                    )
        spinner = lone_spinner(samples, busy=self.spin_cpu, idle=self.idle_cpu)
        for s in samples:
            held = self._persisted((s.pid, "spin"), spinner is s and no_progress, now)
            if held is not None and held >= self.persist_s:
                verdicts.append(
                    Verdict(
                        "process-signature",
                        "spin",
                        f"{s.name} (pid {s.pid}) spins at {s.cpu_percent:.0f}% CPU while its "
                        f"peers sleep, and no progress for {held:.0f} s",
                        (s.pid,),
                    )
                )
        busy_gpu = lone_busy_gpu(gpus, busy=self.gpu_busy, idle=self.gpu_idle)
        held = self._persisted((-1, "gpu"), busy_gpu is not None and no_progress, now)
        if busy_gpu is not None and held is not None and held >= self.persist_s:
            verdicts.append(
                Verdict(
                    "process-signature",
                    "gpu-imbalance",
                    f"GPU {busy_gpu.index} at {busy_gpu.util_percent:.0f}% while the other GPUs "
                    f"idle, and no progress for {held:.0f} s",
                )
            )
        return verdicts


def lone_spinner(
    samples: Sequence[ProcSample], *, busy: float = 80.0, idle: float = 10.0
) -> ProcSample | None:
    """The one process at ``busy``% CPU or more while all (>= 1) others are at ``idle``% or less."""
    known = [s for s in samples if s.cpu_percent is not None]
    if len(known) < 2:
        return None
    hot = [s for s in known if (s.cpu_percent or 0.0) >= busy]
    cold = [s for s in known if (s.cpu_percent or 0.0) <= idle]
    if len(hot) == 1 and len(cold) == len(known) - 1:
        return hot[0]
    return None


def lone_busy_gpu(
    gpus: Sequence[GpuSample], *, busy: float = 90.0, idle: float = 10.0
) -> GpuSample | None:
    """The one GPU at ``busy``% or more while every other GPU is at ``idle``% or less."""
    if len(gpus) < 2:
        return None
    hot = [g for g in gpus if g.util_percent >= busy]
    cold = [g for g in gpus if g.util_percent <= idle]
    if len(hot) == 1 and len(cold) == len(gpus) - 1:
        return hot[0]
    return None


def crash_verdict(exit_code: int | None, *, what: str = "server") -> Verdict | None:
    """The server (or container) exited while being watched."""
    if exit_code is None:
        return None
    return Verdict("crash", "exit", f"{what} exited with code {exit_code}")
