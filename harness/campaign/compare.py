"""``harness compare``: a matrix of cells (engine x TP x profiles), each started fresh, loaded
with the same seeded workload, stopped; then every cell against the first, tested.

Layout: ``cells/<cell>/r<k>/`` is one server's run directory per cell and repeat (plan,
server.log, requests.jsonl, summary.json, bench_result.json, requests.csv, incidents/), and
``cells.jsonl`` gets one line per cell-repeat as it ends. Repeats are interleaved (r1 of every
cell, then r2, ...) so that a drift of the machine over time does not fall on one cell.

A cell-repeat whose server hangs (at startup or under load) counts as a hang for that cell; the
campaign goes on with the next one. With SLO criteria, the first repeat of each cell also
searches the highest request rate the cell sustains within them (:mod:`harness.campaign.slo`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.campaign.base import Planner, Progress, Slot, read_campaign, update_campaign
from harness.campaign.loadplan import LoadPlan
from harness.campaign.server import launch, startup_message
from harness.campaign.session import load_under_watch
from harness.campaign.signals import Terminated, terminate_on_signals
from harness.campaign.slurm import RECORD, SlurmOptions, run_campaign_array
from harness.records import append_jsonl, iter_jsonl, write_json, write_jsonl
from harness.report.aggregate import finished_at
from harness.report.compare import compare_summary
from harness.report.data import CELLS_FILE, load_cells
from harness.report.slo import Criterion, parse_slo
from harness.rundir import RunDir
from harness.runtime.base import ServerHandle
from harness.runtime.local import check_port_free

if TYPE_CHECKING:
    from harness.console import Console
    from harness.watchdog.capture import CaptureOptions


@dataclass(frozen=True)
class Cell:
    """One point of the matrix."""

    engine: str
    tp: int
    profiles: tuple[str, ...]
    label: str

    @property
    def key(self) -> str:
        """A directory-safe name, e.g. ``vllm-tp2-default+eager``."""
        safe = "+".join(p.replace("/", "_").replace(".yaml", "") for p in self.profiles)
        return f"{self.engine}-tp{self.tp}-{safe or 'default'}"

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "tp": self.tp, "profiles": list(self.profiles)}


def matrix(engines: list[str], tps: list[int], profile_sets: list[tuple[str, ...]]) -> list[Cell]:
    """Every combination, labelled by what varies (``tp2``, ``tp2 nccl-safe``, ...)."""
    cells = []
    for engine in engines:
        for tp in tps:
            for profiles in profile_sets:
                parts = []
                if len(engines) > 1:
                    parts.append(engine)
                if len(tps) > 1 or (len(engines) == 1 and len(profile_sets) == 1):
                    parts.append(f"tp{tp}")
                if len(profile_sets) > 1:
                    parts.append(",".join(profiles) or "default")
                cells.append(Cell(engine, tp, profiles, " ".join(parts)))
    return cells


@dataclass(frozen=True)
class CompareOptions:
    """``--repeats``, the SLO search."""

    repeats: int = 1
    slo: tuple[Criterion, ...] = ()
    slo_max_probes: int = 7
    slo_probe_s: float = 20.0


def run_compare(
    run: RunDir,
    cells: list[Cell],
    planner: Planner,
    plan: LoadPlan,
    options: CompareOptions,
    *,
    console: Console,
    progress: Progress,
    capture_options: CaptureOptions | None = None,
) -> dict[str, Any]:
    """Run every cell-repeat; returns (and writes) the summary. Interrupted: the servers are
    stopped and the summary covers what finished."""
    status = "done"
    live: list[ServerHandle] = []
    total = len(cells) * options.repeats
    try:
        with terminate_on_signals():
            step = 0
            for repeat in range(1, options.repeats + 1):
                for cell in cells:
                    step += 1
                    progress.step = step
                    progress.label = f"{cell.label} r{repeat} ({step}/{total})"
                    record = run_cell(
                        run,
                        cell,
                        repeat,
                        planner,
                        plan,
                        options,
                        console,
                        progress,
                        live,
                        capture_options,
                    )
                    append_jsonl(run.path / CELLS_FILE, record)
                    print_cell(console, record)
                    write_summary(run, cells, status="running")
    except (KeyboardInterrupt, Terminated):
        status = "interrupted"
        console.print("stopping ...")
    finally:
        for handle in live:
            handle.stop()
        progress.runner = None
    summary = write_summary(run, cells, status=status)
    update_campaign(run, status=status, ended_at=time.time())
    return summary


def run_cell(
    run: RunDir,
    cell: Cell,
    repeat: int,
    planner: Planner,
    plan: LoadPlan,
    options: CompareOptions,
    console: Console,
    progress: Progress,
    live: list[ServerHandle],
    capture_options: CaptureOptions | None = None,
    port_offset: int = 0,
) -> dict[str, Any]:
    """One cell-repeat: start its server, load it under the watchdog, maybe search the SLO,
    stop it. Returns its record (a line of ``cells.jsonl``)."""
    spec = planner(
        Slot(
            run_id=f"r{repeat}",
            runs_root=run.path / "cells" / cell.key,
            index=repeat,
            engine=cell.engine,
            tp=cell.tp,
            profiles=cell.profiles,
            port_offset=port_offset,
        )
    )
    check_port_free(spec.host, spec.port)
    crun = RunDir(Path(spec.run_dir)).create()
    crun.write_launch_spec(spec)
    record: dict[str, Any] = {
        "cell": cell.key,
        "label": cell.label,
        **cell.to_dict(),
        "repeat": repeat,
        "run_dir": str(crun.path.relative_to(run.path)),
    }
    progress.phase = "starting server"
    began = time.time()
    started = launch(
        spec,
        crun,
        observer=progress,
        console=None,
        capture=True,
        capture_options=capture_options,
        on_started=live.append,
    )
    healthy_at = time.time()
    record["ready_s"] = round(started.startup.elapsed_s, 3) if started.healthy else None
    incidents = [started.incident] if started.incident else []
    if not started.healthy:
        record["startup"] = "crash" if started.startup.outcome == "exited" else "hang"
        record["detail"] = startup_message(spec, started.startup)
    else:
        record["startup"] = "healthy"
        progress.phase = "load"
        progress.requests_target = plan.requests
        segment = load_under_watch(
            started.handle,
            plan.config(spec),
            out_dir=crun.path,
            console=console,
            capture_options=capture_options,
            on_runner=lambda r: setattr(progress, "runner", r),
        )
        progress.runner = None
        incidents += segment.incidents
        record["hang"] = segment.hung
        record["stopped_by"] = segment.stopped_by
        record["load"] = _load_numbers(segment.summary or {})
        first_sent, last_end = _request_span(crun)
        if options.slo and repeat == 1 and not segment.hung and started.handle.poll() is None:
            from harness.campaign.slo import search_max_rate

            progress.phase = "SLO search"
            record["slo_search"] = search_max_rate(
                started.handle,
                plan,
                options.slo,
                start_rate=(segment.summary or {}).get("throughput", {}).get("requests_per_s"),
                out_dir=crun.path / "slo",
                max_probes=options.slo_max_probes,
                probe_s=options.slo_probe_s,
                progress=progress,
            )
        record["overhead"] = {
            "start_to_healthy_s": round(healthy_at - began, 3),
            "healthy_to_first_request_s": None
            if first_sent is None
            else round(first_sent - healthy_at, 3),
        }
        record["_last_end"] = last_end
    stop_began = time.time()
    started.handle.stop()
    live.clear()
    stopped_at = time.time()
    last_end = record.pop("_last_end", None)
    overhead = record.setdefault("overhead", {})
    overhead["stop_s"] = round(stopped_at - stop_began, 3)
    if last_end is not None:
        overhead["last_request_to_stopped_s"] = round(stopped_at - last_end, 3)
    record["incidents"] = [str(i.path.relative_to(run.path)) for i in incidents]
    progress.incidents += len(incidents)
    return record


def task_cell(cells: list[Cell], index: int) -> tuple[Cell, int]:
    """Array task ``index`` (1-based) -> (cell, repeat), in the local order (r1 of every cell,
    then r2, ...)."""
    return cells[(index - 1) % len(cells)], (index - 1) // len(cells) + 1


def cell_record_path(run: RunDir, cell: Cell, repeat: int) -> Path:
    """Where a SLURM array task leaves the record of a cell-repeat."""
    return run.path / "cells" / cell.key / f"r{repeat}" / RECORD


def cells_of(run: RunDir) -> list[Cell]:
    """The campaign's cells, as recorded in campaign.json."""
    return [
        Cell(str(c["engine"]), int(c["tp"]), tuple(c["profiles"]), str(c["label"]))
        for c in read_campaign(run).get("options", {}).get("cells", [])
    ]


def compare_task(run: RunDir, planner: Planner, index: int, *, console: Console) -> dict[str, Any]:
    """Cell-repeat ``index`` as one SLURM array task, its record written for the gatherer."""
    options = read_campaign(run).get("options", {})
    cells = cells_of(run)
    cell, repeat = task_cell(cells, index)
    plan = LoadPlan.model_validate(options.get("load", {}))
    compare = CompareOptions(
        repeats=int(options.get("repeats", 1)),
        slo=tuple(parse_slo(",".join(options["slo_text"]))) if options.get("slo_text") else (),
        slo_max_probes=int(options.get("slo_probes", 7)),
        slo_probe_s=float(options.get("slo_probe_seconds", 20.0)),
    )
    record = run_cell(
        run,
        cell,
        repeat,
        planner,
        plan,
        compare,
        console,
        Progress("compare"),
        [],
        port_offset=index - 1,
    )
    write_json(cell_record_path(run, cell, repeat), record)
    print_cell(console, record)
    return record


def run_compare_slurm(
    run: RunDir,
    cells: list[Cell],
    options: CompareOptions,
    slurm: SlurmOptions,
    *,
    console: Console,
    progress: Progress,
) -> dict[str, Any]:
    """The matrix as a SLURM job array, one task per cell-repeat; gathered into the same
    ``cells.jsonl``, summary and report as a local run."""
    tasks = len(cells) * options.repeats

    records, status = run_campaign_array(
        run,
        tasks,
        lambda n: cell_record_path(run, *task_cell(cells, n)),
        slurm,
        console=console,
        progress=progress,
    )
    lines: list[dict[str, Any]] = []
    for n, record in enumerate(records, start=1):
        cell, repeat = task_cell(cells, n)
        line = {
            "cell": cell.key,
            "label": cell.label,
            **cell.to_dict(),
            "repeat": repeat,
            "run_dir": f"cells/{cell.key}/r{repeat}",
            "startup": "lost",
            **record,
        }
        lines.append(line)
        print_cell(console, line)
    write_jsonl(run.path / CELLS_FILE, lines)
    summary = write_summary(run, cells, status=status)
    update_campaign(run, status=status, ended_at=time.time())
    return summary


def _request_span(crun: RunDir) -> tuple[float | None, float | None]:
    """First send and last finish (wall clock) among a run's records."""
    first: float | None = None
    last: float | None = None
    for rec in iter_jsonl(crun.requests):
        sent = rec.get("sent_at")
        if isinstance(sent, int | float) and (first is None or sent < first):
            first = float(sent)
        end = finished_at(rec)
        if end is not None and (last is None or end > last):
            last = end
    return first, last


def _load_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """The per-repeat numbers the comparison needs from a load summary."""
    return {
        "requests": summary.get("requests"),
        "throughput": summary.get("throughput"),
        "rate": {k: (summary.get("rate") or {}).get(k) for k in ("requested", "achieved")},
        "elapsed_s": (summary.get("run") or {}).get("elapsed_s"),
        "stop_reason": (summary.get("run") or {}).get("stop_reason"),
    }


def write_summary(run: RunDir, cells: list[Cell], *, status: str) -> dict[str, Any]:
    """Recompute ``summary.json`` from every cell's records."""
    record = read_campaign(run)
    slo = LoadPlan.model_validate(record.get("options", {}).get("load", {})).slo
    data = load_cells(
        run.path,
        [{**c.to_dict(), "key": c.key, "label": c.label} for c in cells],
        t0=float(record.get("created_at", 0.0)),
        slo=slo,
    )
    summary: dict[str, Any] = {
        "kind": "compare",
        "compare": compare_summary([c for c in data if c.repeats]),
        "slo_search": {
            c.key: rep["slo_search"]
            for c in data
            for rep in c.repeats
            if rep.get("slo_search") is not None
        },
        "lost": [
            {k: rep.get(k) for k in ("cell", "repeat", "outcome", "detail", "slurm_job")}
            for c in data
            for rep in c.repeats
            if rep.get("startup") == "lost"
        ],
        "campaign": {"id": run.run_id, "status": status},
    }
    write_json(run.summary, summary)
    return summary


def print_cell(console: Console, record: dict[str, Any]) -> None:
    head = f"{record['label']} r{record['repeat']}:"
    if record["startup"] == "lost":
        console.print(f"{head} [bold red]{record.get('outcome')}[/] {record.get('detail') or ''}")
        return
    if record["startup"] != "healthy":
        console.print(f"{head} [bold red]startup {record['startup']}[/] {record.get('detail')}")
        return
    load = record.get("load") or {}
    thr = load.get("throughput") or {}
    req = load.get("requests") or {}
    hang = " [bold red]HANG[/]" if record.get("hang") else ""
    console.print(
        f"{head} ready in {record['ready_s']:.1f} s; {req.get('completed', 0)} ok, "
        f"{req.get('failed', 0)} failed, {req.get('stalled', 0)} stalled; "
        f"{thr.get('output_tokens_per_s')} tok/s{hang}"
    )
