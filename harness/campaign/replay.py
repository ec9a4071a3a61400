"""``harness replay``: send again what was in flight when an incident fired, and count how often
the hang comes back.

The source is an incident bundle: ``inflight.jsonl`` (the requests in flight, exact bodies,
images included, and their send times) and ``launch_spec.json`` (the plan of the server that
hung). Each *attempt* sends those requests once more with the same relative send times, under
the watchdog, against:

* a fresh server (the default): the incident's own plan, or the plan options given; started
  with :func:`~harness.campaign.server.launch` and loaded with
  :func:`~harness.campaign.session.load_under_watch` (the first incident is captured, then the
  server is stopped and the next attempt gets a fresh one; a server that did not hang serves
  the next attempt too);
* a running server of a run (``--run RUN_ID``): the records go into that run, so its own
  watchdog sees stalls and files incidents there;
* any URL (``--url``): no processes to watch; a replayed request that stalls is the hang.

An attempt *reproduced* the hang when an incident was filed during it or a replayed request
stalled. The rate is reproduced attempts over attempts that ran, with its 95 % Wilson interval.

Files (``runs/<id>/``): ``campaign.json`` (kind ``replay``), ``replayed.jsonl`` (the requests
sent, with their offsets), ``attempts.jsonl`` (one line per attempt), ``servers/<n>/`` (a run
directory per fresh server, with its incidents), ``load/`` (the records of ``--url``),
``summary.json``, ``report.html`` and ``report.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.campaign.base import Progress, update_campaign
from harness.campaign.replaysource import ServerPlanner, Source
from harness.campaign.server import launch, startup_message
from harness.campaign.session import load_under_watch, raise_for_signal, run_load_interruptibly
from harness.campaign.signals import Terminated, terminate_on_signals
from harness.errors import RunNotFound
from harness.load.config import LoadConfig
from harness.load.runner import LoadRunner
from harness.records import append_jsonl, iter_jsonl, write_json, write_jsonl
from harness.report.intervals import wilson
from harness.rundir import RunDir
from harness.runtime.base import ServerHandle
from harness.runtime.local import check_port_free
from harness.spec import LaunchSpec

if TYPE_CHECKING:
    from harness.console import Console
    from harness.watchdog.capture import CaptureOptions

ATTEMPTS_FILE = "attempts.jsonl"
REPLAYED_FILE = "replayed.jsonl"
#: How long a replayed request may go without a token before the load counts it stalled, when
#: the watchdog watches too: longer than the watchdog's own limit, so that the watchdog
#: captures the hang (with every process's stack) before the load gives up on the request.
LOAD_STALL_FACTOR = 2.0


@dataclass(frozen=True)
class ReplayOptions:
    """``--times``, ``--concurrency``, ``--stall-after`` (None: the plan's), and how long
    after the last replayed request a running server's watchdog may take to file its
    incident (``--run``)."""

    times: int = 3
    concurrency: int | None = None
    stall_after_s: float | None = None
    settle_s: float = 30.0


def replay_config(
    source: Source,
    *,
    stall_after_s: float,
    concurrency: int | None,
    first_index: int,
    model: str | None,
    deadline_s: float = 600.0,
) -> LoadConfig:
    """The load of one attempt: the incident's requests at their recorded offsets."""
    return LoadConfig(
        rate=1.0,  # unused: the replay's own offsets are the schedule
        concurrency=concurrency,
        requests=len(source.items),
        stall_after_s=stall_after_s,
        deadline_s=deadline_s,
        model=model,
        first_index=first_index,
        replay=tuple(source.items),
    )


#: Plans the fresh server of a slot number (1, 2, ...) in ``runs/<id>/servers/``.


@dataclass
class _Attempt:
    n: int
    outcome: str = "clean"  # reproduced | clean | no-start
    server: str | None = None
    first_index: int = 0
    sent: int = 0
    ok: int = 0
    stalled: int = 0
    failed: int = 0
    incident: str | None = None
    incident_kind: str | None = None
    likely: str | None = None
    signature: str | None = None
    detail: str | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _counts(summary: Mapping[str, Any] | None) -> tuple[int, int, int, int]:
    req = (summary or {}).get("requests", {})
    return (
        int(req.get("sent", 0) or 0),
        int(req.get("completed", 0) or 0),
        int(req.get("stalled", 0) or 0),
        int(req.get("failed", 0) or 0),
    )


def _incident_facts(path: Path) -> tuple[str | None, str | None, str | None]:
    try:
        doc = json.loads((path / "incident.json").read_text())
    except (OSError, ValueError):
        return None, None, None
    sigs = doc.get("signatures") if isinstance(doc.get("signatures"), list) else []
    name = sigs[0].get("name") if sigs and isinstance(sigs[0], dict) else None
    return doc.get("kind"), doc.get("likely"), name


def _link(run: RunDir, path: Path) -> str:
    return os.path.relpath(path, run.path)


def run_replay(
    run: RunDir,
    source: Source,
    options: ReplayOptions,
    *,
    planner: ServerPlanner | None = None,
    target_run: RunDir | None = None,
    url: str | None = None,
    console: Console,
    progress: Progress,
    capture_options: CaptureOptions | None = None,
) -> dict[str, Any]:
    """Run the attempts in ``run`` (already started with ``campaign.json``) against a fresh
    server (``planner``), a running run (``target_run``) or ``url``; returns the summary also
    written to ``summary.json``."""
    write_jsonl(run.path / REPLAYED_FILE, [it.to_dict() for it in source.items])
    live: list[ServerHandle] = []
    status = "done"
    try:
        with terminate_on_signals():
            if planner is not None:
                _fresh(run, source, options, planner, live, console, progress, capture_options)
            elif target_run is not None:
                _running(run, source, options, target_run, console, progress)
            else:
                _url(run, source, options, str(url), console, progress)
    except (KeyboardInterrupt, Terminated):
        status = "interrupted"
        console.print("stopping ...")
    finally:
        for handle in live:
            handle.stop()
    summary = write_summary(run, source, status=status)
    update_campaign(run, status=status, ended_at=time.time())
    return summary


def _fresh(
    run: RunDir,
    source: Source,
    options: ReplayOptions,
    planner: ServerPlanner,
    live: list[ServerHandle],
    console: Console,
    progress: Progress,
    capture_options: CaptureOptions | None,
) -> None:
    handle: ServerHandle | None = None
    spec: LaunchSpec | None = None
    servers = 0
    next_index = 0
    for n in range(1, options.times + 1):
        progress.step, progress.label = n, f"attempt {n}/{options.times}"
        attempt = _Attempt(n)
        began = time.monotonic()
        if handle is None:
            servers += 1
            spec = planner(servers)
            check_port_free(spec.host, spec.port)
            server_run = RunDir(Path(spec.run_dir)).create()
            server_run.write_launch_spec(spec)
            started = launch(
                spec,
                server_run,
                observer=progress,
                console=console,
                capture=True,
                capture_options=capture_options,
                on_started=live.append,
            )
            if not started.healthy:
                attempt.outcome = "no-start"
                attempt.server = _link(run, server_run.path)
                attempt.detail = startup_message(spec, started.startup)
                if started.incident is not None:
                    attempt.incident = _link(run, started.incident.path)
                started.handle.stop()
                live.clear()
                _record(run, attempt, began, console, options.times)
                continue
            handle = started.handle
        assert spec is not None
        stall = options.stall_after_s or spec.watch.stall_after_s
        config = replay_config(
            source,
            stall_after_s=stall * LOAD_STALL_FACTOR + 10.0,
            concurrency=options.concurrency,
            first_index=next_index,
            model=spec.served_model_name,
            deadline_s=spec.deadlines.request_s,
        )
        progress.phase = "replaying"
        segment = load_under_watch(
            handle,
            config,
            out_dir=handle.run.path,
            console=console,
            capture_options=capture_options,
            on_runner=lambda r: setattr(progress, "runner", r),
        )
        progress.runner = None
        next_index += len(source.items)
        attempt.server = _link(run, handle.run.path)
        attempt.first_index = config.first_index
        attempt.sent, attempt.ok, attempt.stalled, attempt.failed = _counts(segment.summary)
        if segment.incidents:
            path = segment.incidents[0].path
            attempt.incident = _link(run, path)
            attempt.incident_kind, attempt.likely, attempt.signature = _incident_facts(path)
        if segment.hung or attempt.stalled:
            attempt.outcome = "reproduced"
        if segment.stopped_by != "done" or attempt.stalled:
            # The watchdog stopped it, or it hung without the watchdog: the next attempt
            # gets a fresh server.
            handle.stop()
            live.clear()
            handle = None
        _record(run, attempt, began, console, options.times)
    if handle is not None:
        handle.stop()
        live.clear()


def _run_once(
    config: LoadConfig, base_url: str, out_dir: Path, progress: Progress
) -> dict[str, Any]:
    runner = LoadRunner(config, base_url=base_url, out_dir=out_dir)
    progress.runner = runner
    try:
        summary, signum = run_load_interruptibly(runner)
    finally:
        progress.runner = None
    raise_for_signal(signum)
    return summary


def _incident_dirs(run: RunDir) -> set[Path]:
    if not run.incidents.is_dir():
        return set()
    return {p for p in run.incidents.iterdir() if p.is_dir()}


def _running(
    run: RunDir,
    source: Source,
    options: ReplayOptions,
    target: RunDir,
    console: Console,
    progress: Progress,
) -> None:
    try:
        spec = LaunchSpec.from_json(target.launch_spec.read_text())
    except (OSError, ValueError):
        raise RunNotFound(f"run {target.run_id} has no readable launch_spec.json") from None
    stall = options.stall_after_s or spec.watch.stall_after_s
    next_index = max((int(r.get("index", -1)) for r in iter_jsonl(target.requests)), default=-1)
    for n in range(1, options.times + 1):
        progress.step, progress.label = n, f"attempt {n}/{options.times}"
        began = time.monotonic()
        before = _incident_dirs(target)
        first = next_index + 1
        config = replay_config(
            source,
            stall_after_s=stall * LOAD_STALL_FACTOR + 10.0,
            concurrency=options.concurrency,
            first_index=first,
            model=spec.served_model_name,
            deadline_s=spec.deadlines.request_s,
        )
        progress.phase = "replaying"
        summary = _run_once(config, spec.base_url, target.path, progress)
        next_index = first + len(source.items) - 1
        attempt = _Attempt(n, server=_link(run, target.path), first_index=first)
        attempt.sent, attempt.ok, attempt.stalled, attempt.failed = _counts(summary)
        new = _wait_for_incident(target, before, options.settle_s if attempt.stalled else 0.0)
        if new is not None:
            attempt.incident = _link(run, new)
            attempt.incident_kind, attempt.likely, attempt.signature = _incident_facts(new)
        if new is not None or attempt.stalled:
            attempt.outcome = "reproduced"
        _record(run, attempt, began, console, options.times)
        if attempt.outcome == "reproduced" and n < options.times:
            console.print(
                "the server hung again: the remaining attempts need it to recover (or restart "
                "with --on-hang restart); stopping here"
            )
            break


def _wait_for_incident(target: RunDir, before: set[Path], wait_s: float) -> Path | None:
    """A new incident of ``target``'s own watchdog (its incident.json written), waiting up to
    ``wait_s`` for one."""
    end = time.monotonic() + wait_s
    while True:
        new = sorted(
            (p for p in _incident_dirs(target) - before if (p / "summary.md").exists()),
            key=lambda p: p.name,
        )
        if new or time.monotonic() >= end:
            return new[0] if new else None
        time.sleep(0.5)


def _url(
    run: RunDir,
    source: Source,
    options: ReplayOptions,
    url: str,
    console: Console,
    progress: Progress,
) -> None:
    out = run.path / "load"
    stall = options.stall_after_s or 60.0
    for n in range(1, options.times + 1):
        progress.step, progress.label = n, f"attempt {n}/{options.times}"
        began = time.monotonic()
        first = (n - 1) * len(source.items)
        config = replay_config(
            source,
            stall_after_s=stall,
            concurrency=options.concurrency,
            first_index=first,
            model=None,
        )
        progress.phase = "replaying"
        summary = _run_once(config, url, out, progress)
        attempt = _Attempt(n, server=url, first_index=first)
        attempt.sent, attempt.ok, attempt.stalled, attempt.failed = _counts(summary)
        if attempt.stalled:
            attempt.outcome = "reproduced"
        _record(run, attempt, began, console, options.times)
        if attempt.outcome == "reproduced" and n < options.times:
            console.print("the server hung again: stopping the attempts here")
            break


def _record(run: RunDir, attempt: _Attempt, began: float, console: Console, total: int) -> None:
    attempt.elapsed_s = round(time.monotonic() - began, 3)
    append_jsonl(run.path / ATTEMPTS_FILE, attempt.to_dict())
    word = {"reproduced": "[bold red]HANG AGAIN[/]", "clean": "no hang", "no-start": "no start"}
    where = f" → {run.path / attempt.incident}" if attempt.incident else ""
    extra = f" ({attempt.likely})" if attempt.likely else ""
    console.print(
        f"attempt {attempt.n}/{total}: {word[attempt.outcome]}: {attempt.ok} ok, "
        f"{attempt.stalled} stalled of {attempt.sent} sent{extra}{where}"
    )
    write_summary(run, None, status="running")


def write_summary(run: RunDir, source: Source | None, *, status: str) -> dict[str, Any]:
    """Recompute ``summary.json`` from ``attempts.jsonl``."""
    attempts = list(iter_jsonl(run.path / ATTEMPTS_FILE))
    ran = [a for a in attempts if a.get("outcome") in ("reproduced", "clean")]
    reproduced = [a for a in ran if a["outcome"] == "reproduced"]
    rate = wilson(len(reproduced), len(ran))
    previous: dict[str, Any] = {}
    if source is None:
        try:
            previous = json.loads(run.summary.read_text()).get("replay", {}).get("source", {})
        except (OSError, ValueError):
            previous = {}
    src = previous or (
        {
            "incident": str(source.path),
            "kind": source.kind,
            "likely": source.likely,
            "signature": source.signature,
            "requests": len(source.items),
            "span_s": round(source.span_s, 3),
        }
        if source is not None
        else {}
    )
    original = src.get("signature")
    summary = {
        "kind": "replay",
        "replay": {
            "source": src,
            "attempts": len(ran),
            "reproduced": len(reproduced),
            "no_start": sum(1 for a in attempts if a.get("outcome") == "no-start"),
            "rate": rate.to_dict()["value"],
            "ci95": rate.to_dict()["ci95"],
            "same_signature": sum(
                1 for a in reproduced if original and a.get("signature") == original
            ),
            "incidents": [a["incident"] for a in attempts if a.get("incident")],
        },
        "campaign": {"id": run.run_id, "status": status},
    }
    write_json(run.summary, summary)
    return summary
