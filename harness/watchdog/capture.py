"""Capture (I/O): every process's stacks and state, logs, GPU and shm -> an incident bundle.

``capture_incident`` is the one entry point the watcher, ``harness watch``, ``harness dump`` and
the campaign layer call. It never waits without a deadline: each ``py-spy`` call has its own
timeout, dumps run in parallel, and a stopped process (state T) is read without suspending it
(``py-spy --nonblocking``), so a stopped or dying process cannot stall the capture.

The steps, in order: snapshot the processes (:mod:`~harness.watchdog.probes`), ask the flight
recorders for a dump, two rounds of ``py-spy dump`` (:mod:`~harness.watchdog.pyspy`) with the
side files written in between, the second CPU sample and the GPUs, the per-process reports and
stack files (:mod:`~harness.watchdog.bundle`), core files on request, the flight-recorder
analysis (:mod:`~harness.watchdog.flightrec`), the known signatures
(:mod:`~harness.watchdog.signatures`), then ``processes.txt``, ``incident.json`` and
``summary.md``.

Bundle layout (docs/architecture.md): ``summary.md``, ``incident.json``, ``stacks/<pid>.txt``
and ``stacks/<pid>.json`` (two dumps a few seconds apart), ``processes.txt``, ``env.txt``
(secrets redacted), ``server.log.tail``, ``nvidia-smi.txt`` / NVML in ``incident.json`` on GPU
hosts, ``shm.txt``, ``inflight.jsonl``, ``launch_spec.json``, ``nccl/`` and
``flight_recorder/`` when those files exist, and with ``CaptureOptions(cores=True)`` ``cores/``
(gcore files, ``py-spy dump --core`` of each, and ``README.txt``; see ``cores.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.console import Console
from harness.rundir import RunDir
from harness.spec import LaunchSpec
from harness.watchdog import diagnosis, flightrec, probes
from harness.watchdog import matching as mt
from harness.watchdog.bundle import BundleWriter, ProcessStacks, process_reports, write_cores
from harness.watchdog.probes import (
    ProcInfo,
    has_cap_sys_ptrace,
    is_python_process,
    proc_state,
    process_tree,
    tail_bytes,
)
from harness.watchdog.pyspy import (
    ContainerExec,
    Dump,
    dump_stack,
    find_py_spy,
    ptrace_advice,
)
from harness.watchdog.redact import Redactor
from harness.watchdog.rules import GpuSample, Verdict
from harness.watchdog.summary import (
    OddOne,
    ProcessReport,
    odd_one_out,
    processes_table,
    render_summary,
    where_line,
)

# Public names other modules and embedding programs import from here.
__all__ = [
    "CaptureOptions",
    "Console",
    "ContainerExec",
    "Incident",
    "capture_incident",
    "dump_stack",
    "find_py_spy",
    "has_cap_sys_ptrace",
    "is_python_process",
    "proc_state",
    "process_tree",
    "ptrace_advice",
    "tail_bytes",
]


@dataclass(frozen=True)
class CaptureOptions:
    """How a capture runs. ``gap_s`` separates the two dumps (stuck or slow?)."""

    rounds: int = 2
    gap_s: float = 2.0
    timeout_s: float = 10.0
    max_workers: int = 32
    log_tail_bytes: int = 256 * 1024
    py_spy: str | None = None
    native: bool = True
    # Core files (gcore) of the odd process out and its peers, after the stacks: opt-in,
    # because a core is about as large as the process's resident memory.
    cores: bool = False
    core_max: int = 4
    core_timeout_s: float = 60.0
    #: The user's signature files; None: those named by $HARNESS_SIGNATURES (--signatures).
    signature_files: tuple[str, ...] | None = None
    #: How long to wait for the flight recorders' dumps after asking for them.
    flight_recorder_wait_s: float = 10.0


@dataclass
class Incident:
    """A written bundle and what it says."""

    path: Path
    verdict: Verdict
    processes: list[ProcessReport]
    odd: OddOne | None
    headline: str
    where: str
    capture_s: float
    also: list[Verdict] = field(default_factory=list)
    likely: str = ""
    signatures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.md"


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class _Capture:
    """The state of one capture as it goes through its steps."""

    out_dir: Path
    opts: CaptureOptions
    procs: list[ProcInfo]
    writer: BundleWriter
    py_spy: str | None
    notes: list[str]
    spec: LaunchSpec | None
    started: float
    log_text: str = ""
    nccl_texts: dict[str, str] = field(default_factory=dict)
    smi_status: str = "absent"
    smi_text: str = ""
    fr_before: set[Path] = field(default_factory=set)
    fr_triggered: int = 0

    @property
    def envs(self) -> list[Mapping[str, str]]:
        envs: list[Mapping[str, str]] = [p.environ for p in self.procs]
        if self.spec is not None:
            envs.append(dict(self.spec.env))
        return envs


def capture_incident(
    run: RunDir | None,
    out_dir: Path | None = None,
    *,
    pids: Sequence[int],
    kind: str = "manual",
    detail: str = "",
    rule: str = "manual",
    verdict: Verdict | None = None,
    also: Sequence[Verdict] = (),
    spec: LaunchSpec | None = None,
    log_path: Path | None = None,
    inflight: Sequence[Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    container_exec: ContainerExec | None = None,
    options: CaptureOptions | None = None,
    console: Console | None = None,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Incident:
    """Capture every process in ``pids`` into ``out_dir`` (default: the run's next incident dir).

    ``verdict`` (or ``kind``/``rule``/``detail``) says what was detected; ``spec``, ``log_path``
    (default: the run's server.log) and ``inflight`` (request payloads, for replay) are copied
    when given. Returns the :class:`Incident`; never raises for a process that is gone, stopped
    or refuses ptrace: the bundle says so instead.
    """
    opts = options or CaptureOptions()
    detected_wall = time.time()
    verdict = verdict or Verdict(kind, rule, detail or kind)
    if out_dir is None:
        if run is None:
            raise ValueError("capture_incident needs a run or an out_dir")
        out_dir = run.next_incident_dir()
    if log_path is None and run is not None and run.server_log.exists():
        log_path = run.server_log
    cap = _start(out_dir, pids, spec, env, opts, notes, console)
    rounds = _dump_rounds(cap, container_exec, log_path, inflight)
    for p in cap.procs:
        probes.resample(p)
    gpus = _gpus(cap)
    stacks = process_reports(cap.procs, rounds, cap.writer, cap.started)
    odd = odd_one_out(stacks.reports, gpus)
    core_info = None
    if opts.cores:
        core_info = write_cores(
            cap.writer,
            stacks.reports,
            odd,
            py_spy=cap.py_spy,
            core_max=opts.core_max,
            core_timeout_s=opts.core_timeout_s,
            notes=cap.notes,
            console=console,
        )
    flight, found = _diagnose(cap, verdict, stacks, odd, gpus, inflight)
    return _write_records(
        cap,
        run,
        verdict,
        also,
        detected_wall,
        stacks.reports,
        odd,
        gpus,
        found,
        flight,
        {**({"cores": core_info} if core_info is not None else {}), **(extra or {})},
        console,
    )


# --------------------------------------------------------------------------------------------
# The steps


def _start(
    out_dir: Path,
    pids: Sequence[int],
    spec: LaunchSpec | None,
    env: Mapping[str, str] | None,
    opts: CaptureOptions,
    notes: Sequence[str],
    console: Console | None,
) -> _Capture:
    """Snapshot the processes, set up the writer, ask the flight recorders for a dump."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = list(dict.fromkeys(pids))
    procs = [probes.snapshot(pid) for pid in ordered]
    redactor = Redactor.from_envs(
        os.environ, spec.env if spec else None, env, *[p.environ for p in procs]
    )
    py_spy = find_py_spy(opts.py_spy)
    cap = _Capture(
        out_dir, opts, procs, BundleWriter(out_dir, redactor), py_spy, list(notes), spec, started
    )
    if py_spy is None:
        cap.notes.append("py-spy not found: no stacks (pip install py-spy, or set HARNESS_PY_SPY)")
    if console is not None:
        console.print(f"[bold]capturing[/] {len(procs)} process(es) into {out_dir}")
    # Asked first, so the dumps are written while the stacks are taken.
    cap.fr_before = set(probes.debug_files(cap.envs)["flight_recorder"])
    triggered = probes.trigger_flight_recorder(cap.envs)
    cap.fr_triggered = len(triggered)
    if triggered:
        cap.notes.append(f"asked the flight recorder for a dump via {len(triggered)} pipe(s)")
    return cap


def _dump_rounds(
    cap: _Capture,
    container_exec: ContainerExec | None,
    log_path: Path | None,
    inflight: Sequence[Mapping[str, Any]] | None,
) -> dict[int, list[Dump]]:
    """Two rounds of py-spy of every Python process, in parallel; the side files in between."""
    opts = cap.opts
    python_procs = [p for p in cap.procs if p.python and not p.gone]
    rounds: dict[int, list[Dump]] = {p.pid: [] for p in python_procs}
    workers = max(1, min(opts.max_workers, len(python_procs)))
    with cf.ThreadPoolExecutor(max_workers=workers + 2, thread_name_prefix="capture") as pool:
        for r in range(max(1, opts.rounds)):
            round_start = time.monotonic()
            if cap.py_spy is not None:
                futs = {
                    pool.submit(
                        dump_stack,
                        p.pid,
                        py_spy=cap.py_spy,
                        state=proc_state(p.pid),
                        timeout=opts.timeout_s,
                        native=opts.native,
                        container_exec=container_exec,
                    ): p.pid
                    for p in python_procs
                }
                for fut in cf.as_completed(futs):
                    rounds[futs[fut]].append(fut.result())
            if r == 0:
                _side_files(cap, log_path, inflight)
            if r + 1 < opts.rounds:
                left = opts.gap_s - (time.monotonic() - round_start)
                if left > 0:
                    time.sleep(left)
    for dumps in rounds.values():
        dumps.sort(key=lambda d: d.started_at)
    return rounds


def _side_files(
    cap: _Capture, log_path: Path | None, inflight: Sequence[Mapping[str, Any]] | None
) -> None:
    """env.txt, launch_spec.json, server.log.tail, inflight.jsonl, shm.txt, nvidia-smi.txt,
    nccl/: everything but the stacks, between the two dump rounds."""
    w, spec = cap.writer, cap.spec
    root_env = next((p.environ for p in cap.procs if p.environ), {})
    env_text = ["# environment of the server's first process (secrets redacted)"]
    env_text += w.redactor.env_lines(root_env)
    if spec is not None:
        env_text += ["", "# launch spec env (secrets redacted)", *w.redactor.env_lines(spec.env)]
    w.text("env.txt", "\n".join(env_text) + "\n")
    if spec is not None:
        w.text("launch_spec.json", spec.to_json())
    if log_path is not None:
        cap.log_text = w.copy_text("server.log.tail", log_path, cap.opts.log_tail_bytes)
    if inflight is not None:
        w.text("inflight.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in inflight))
    shm_text, _usage = probes.shm_report()
    w.text("shm.txt", shm_text)
    smi = probes.nvidia_smi(cap.opts.timeout_s)
    cap.smi_status, cap.smi_text = smi.status, smi.text
    if smi.status != "absent":
        w.text("nvidia-smi.txt", smi.text)
    if smi.status == "timeout":
        cap.notes.append(f"nvidia-smi -q did not answer within {cap.opts.timeout_s:g} s")
    envs = cap.envs
    for src in probes.debug_files(envs)["nccl"][:64]:
        cap.nccl_texts[f"nccl/{src.name}"] = w.copy_text(f"nccl/{src.name}", src, 4 * 2**20)
    if any(e.get("NCCL_DEBUG") for e in envs) and not any(e.get("NCCL_DEBUG_FILE") for e in envs):
        cap.notes.append("NCCL_DEBUG is set without NCCL_DEBUG_FILE: NCCL output is in server.log")


def _diagnose(
    cap: _Capture,
    verdict: Verdict,
    stacks: ProcessStacks,
    odd: OddOne | None,
    gpus: Sequence[GpuSample],
    inflight: Sequence[Mapping[str, Any]] | None,
) -> tuple[list[flightrec.FlightReport], list[mt.Match]]:
    """The flight recorders' dumps, then every known signature that matches the incident."""
    flight = diagnosis.flight_recorder(
        cap.writer,
        cap.envs,
        before=cap.fr_before,
        triggered=cap.fr_triggered,
        wait_s=cap.opts.flight_recorder_wait_s,
        notes=cap.notes,
    )
    nccl = [line for name, text in cap.nccl_texts.items() for line in mt.log_lines(name, text)]
    facts = mt.Facts(
        kind=verdict.kind,
        rule=verdict.rule,
        logs=[*mt.log_lines("server.log.tail", cap.log_text), *nccl],
        processes=stacks.reports,
        stacks=stacks.threads,
        odd=odd,
        gpus=gpus,
        nvidia_smi=cap.smi_status,
        envs=cap.envs,
        profiles=list(cap.spec.profiles) if cap.spec else [],
        images=list(diagnosis.inflight_images(inflight or ())),
    )
    catalogue = diagnosis.catalogue(cap.opts.signature_files, cap.notes)
    return flight, mt.match_catalogue(catalogue, facts)


def _write_records(
    cap: _Capture,
    run: RunDir | None,
    verdict: Verdict,
    also: Sequence[Verdict],
    detected_wall: float,
    reports: list[ProcessReport],
    odd: OddOne | None,
    gpus: Sequence[GpuSample],
    found: Sequence[mt.Match],
    flight: Sequence[flightrec.FlightReport],
    extra: Mapping[str, Any],
    console: Console | None,
) -> Incident:
    """``processes.txt``, ``incident.json`` and ``summary.md`` (written last)."""
    likely = mt.likely_line(found)
    matches = [m.to_dict() for m in found]
    capture_s = time.monotonic() - cap.started
    cap.writer.text("processes.txt", processes_table(reports))
    doc: dict[str, Any] = {
        "kind": verdict.kind,
        "rule": verdict.rule,
        "detail": verdict.detail,
        "detected_at": dt.datetime.fromtimestamp(detected_wall, dt.UTC).isoformat(),
        "also": [v.to_dict() for v in also],
        "odd_one_out": None
        if odd is None
        else {"pid": odd.pid, "process": odd.label, "reason": odd.reason},
        "where": where_line(reports, odd),
        "likely": likely,
        "signatures": matches,
        "processes": [r.to_dict() for r in reports],
        "gpus": [g.__dict__ for g in gpus],
        "run_id": run.run_id if run else None,
        "capture_s": round(capture_s, 3),
        "notes": cap.notes,
    }
    if flight:
        doc["flight_recorder"] = [r.to_dict() for r in flight]
    doc.update(extra)
    files = sorted({*cap.writer.files, "incident.json", "summary.md"})
    cap.writer.json("incident.json", doc)
    summary = render_summary(
        verdict=verdict,
        detected_at=_utc(detected_wall),
        processes=reports,
        odd=odd,
        also=also,
        gpus=gpus,
        notes=cap.notes,
        files=files,
        capture_s=capture_s,
        likely=likely,
        signatures=matches,
        sections=flightrec.render(flight) if flight else (),
    )
    cap.writer.text("summary.md", summary)
    lines = summary.splitlines()
    incident = Incident(
        cap.out_dir,
        verdict,
        list(reports),
        odd,
        lines[0],
        lines[1],
        capture_s,
        list(also),
        likely,
        matches,
    )
    if console is not None:
        console.print(f"[bold red]{incident.headline}[/]")
        console.print(incident.where, markup=False)
        console.print(likely, markup=False)
        console.print(f"bundle: {cap.out_dir}", markup=False)
    return incident


def _gpus(cap: _Capture) -> list[GpuSample]:
    gpus, note = probes.gpu_snapshot()
    if note:
        cap.notes.append(note)
    if not gpus and cap.smi_status == "ok":
        gpus = probes.gpus_from_nvidia_smi(cap.smi_text)
    return gpus
