"""What ``harness load`` shows: the live progress line while it runs, the summary at the end."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from harness.load.results import BENCH_RESULT_FILE
from harness.load.runner import LoadStatus, Summary
from harness.rundir import RunDir


class LoadProgress:
    """A rich live line on a terminal, a plain line every 10 s elsewhere, from the runner's
    status snapshots (refreshed from the event loop, not a thread, so it cannot disturb send
    timing). Nothing is shown before the load starts sending."""

    def __init__(self, status: Callable[[], LoadStatus | None]) -> None:
        self.status = status
        self.console = Console(stderr=True)
        self.live: Any = None
        self.task: asyncio.Task[None] | None = None
        self.interval = 0.5 if self.console.is_terminal else 10.0

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._update()

    def _update(self) -> None:
        status = self.status()
        if status is None:
            return
        if not self.console.is_terminal:
            print(progress_line(status), file=sys.stderr, flush=True)
            return
        if self.live is None:
            from rich.live import Live

            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()
        style = "bold red" if status.stalled else "bold"
        self.live.update(Text(progress_line(status), style=style), refresh=True)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.live is not None:
            self._update()
            self.live.stop()


def progress_line(s: LoadStatus) -> str:
    """One line: elapsed, sent, done, in flight, outcomes, rates, mean TTFT."""
    rps = s.ok / s.elapsed_s if s.elapsed_s > 0 else 0.0
    tps = s.output_tokens / s.elapsed_s if s.elapsed_s > 0 else 0.0
    done = f"{s.finished}/{s.target}" if s.target else f"{s.finished}"
    ttft = f"{s.ttft_mean_ms:.1f} ms" if s.ttft_mean_ms is not None else "-"
    return (
        f"{s.elapsed_s:7.1f}s  sent {s.sent}  done {done}  in-flight {s.in_flight}  "
        f"ok {s.ok}  failed {s.failed}  stalled {s.stalled}  "
        f"{rps:.1f} req/s  {tps:.0f} tok/s  ttft mean {ttft}"
    )


def rate_line(summary: Summary) -> str:
    """The rate part of the final summary: the loop, requested vs achieved, the cap."""
    rate = summary["rate"]
    run = summary["run"]
    if run.get("mode") == "closed" or rate.get("requested") is None:
        return f"closed loop, concurrency {run.get('concurrency')}"
    line = f"rate requested {rate['requested']:g}/s, achieved " + (
        f"{rate['achieved']:g}/s" if rate.get("achieved") is not None else "-"
    )
    expected = rate.get("expected_sent_range")
    if expected and run.get("duration_s"):
        line += (
            f" ({summary['requests']['sent']} sent in {run['duration_s']:g} s, "
            f"expected {expected[0]}-{expected[1]})"
            if expected[0] != expected[1]
            else f" ({summary['requests']['sent']} sent in {run['duration_s']:g} s)"
        )
    capped = rate.get("capped_by_concurrency")
    if capped:
        line += (
            f"; capped by --concurrency {capped['concurrency']} "
            f"({capped['waited']} sends waited for a slot)"
        )
    return line


def _stdout_console() -> Console:
    """Rich console on stdout; output that is not a terminal (a pipe, a log file) is never
    wrapped, so paths and numbers stay on one line."""
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console = Console(file=sys.stdout, soft_wrap=True)
    return console


def print_summary(summary: Summary, run: RunDir) -> None:
    """The final summary: outcomes, throughput and rate, the latency table, goodput, errors,
    and where the files are."""
    console = _stdout_console()
    req = summary["requests"]
    thr = summary["throughput"]
    console.print(
        f"[bold]{req['completed']}[/] ok, [bold]{req['failed']}[/] failed, "
        f"[bold {'red' if req['stalled'] else ''}]{req['stalled']}[/] stalled, "
        f"{req['aborted']} aborted in {summary['run']['elapsed_s']} s "
        f"({escape(str(summary['run']['stop_reason']))})"
    )
    console.print(
        f"throughput {thr['requests_per_s']} req/s, {thr['output_tokens_per_s']} output tok/s; "
        + escape(rate_line(summary))
    )
    table = Table("ms", "mean", "p50", "p90", "p99", "p99.9")
    for name, row in summary["latency_ms"].items():
        table.add_row(name, *(_fmt(row[k]) for k in ("mean", "p50", "p90", "p99", "p999")))
    console.print(table)
    if summary.get("goodput"):
        g = summary["goodput"]
        console.print(f"goodput {g['requests_per_s']} req/s ({g['fraction']} of finished)")
    if summary.get("errors"):
        console.print(
            "errors: " + escape(", ".join(f"{k} x{v}" for k, v in summary["errors"].items()))
        )
    console.print(
        f"records: {escape(str(run.requests))}\nsummary: {escape(str(run.summary))}\n"
        f"vllm bench serve result: {escape(str(run.path / BENCH_RESULT_FILE))}",
        highlight=False,
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
