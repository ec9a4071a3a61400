"""What the campaign commands share on the command line: the planner built from the plan
options, the load options, the live progress display, and the end of a campaign (report, exit)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from harness.campaign.base import Planner, Progress, Slot
from harness.cli.planopts import build_spec
from harness.spec import LaunchSpec

if TYPE_CHECKING:
    from harness.campaign.loadplan import LoadPlan

F = TypeVar("F", bound=Callable[..., Any])


def make_planner(
    options: dict[str, Any],
    *,
    runs_dir: str | None,
    startup_timeout: float | None = None,
    stall_after: float | None = None,
    seed: int | None = None,
) -> Planner:
    """A :data:`Planner` over the command's plan options; a slot may change engine, TP and
    profiles (compare cells). With ``--engine sim`` and a seed, start ``n`` gets sim seed
    ``seed + n`` so a campaign's fault decisions are reproducible."""

    def plan(slot: Slot) -> LaunchSpec:
        opts = dict(options)
        if slot.engine is not None:
            opts["engine"] = slot.engine
        if slot.tp is not None:
            opts["tp"] = slot.tp
        if slot.profiles is not None:
            opts["profiles"] = slot.profiles
        opts["port"] = int(opts["port"]) + slot.port_offset
        if seed is not None and opts["engine"] == "sim":
            opts["engine_args"] = (*opts["engine_args"], f"--seed {seed + slot.index}")
        return build_spec(
            opts,
            runs_dir=str(slot.runs_root),
            run_id=slot.run_id,
            startup_timeout=startup_timeout,
            stall_after=stall_after,
        )

    return plan


def planner_record(
    options: dict[str, Any],
    *,
    startup_timeout: float | None = None,
    stall_after: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """What ``campaign.json`` keeps so that a SLURM array task plans exactly the same servers."""
    return {
        "plan_options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "startup_timeout": startup_timeout,
        "stall_after": stall_after,
        "seed": seed,
    }


def planner_from_record(record: dict[str, Any]) -> Planner:
    """The campaign's planner again, in a SLURM array task (see :func:`planner_record`)."""
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in record["plan_options"].items()}
    return make_planner(
        opts,
        runs_dir=None,
        startup_timeout=record.get("startup_timeout"),
        stall_after=record.get("stall_after"),
        seed=record.get("seed"),
    )


def refuse_secret_flags_for_slurm(options: dict[str, Any]) -> None:
    """A SLURM task re-plans from campaign.json, which never holds secrets: a key given as an
    engine flag cannot reach it. Exporting it does (sbatch passes the environment on)."""
    import shlex

    from harness.errors import BadInput
    from harness.redact import secret_arguments, secret_flag

    for value in options.get("engine_args") or ():
        tokens = shlex.split(value)
        if secret_arguments(tokens):
            flag = next(t for t in tokens if secret_flag(t))
            raise BadInput(
                f"--engine-arg {flag.split('=', 1)[0]} ... cannot travel to SLURM tasks "
                "(runs/ never holds secrets)",
                hint="export the engine's variable instead (vLLM: VLLM_API_KEY, HF_TOKEN) "
                "and drop the flag; sbatch passes your environment to the tasks",
            )


def slurm_options(func: F) -> F:
    """``--slurm``, ``--partition``, ``--slurm-time``: fan the campaign out as a job array."""
    options = [
        click.option(
            "--slurm",
            is_flag=True,
            help="Run every step as a task of one SLURM job array (sbatch), gathered here.",
        ),
        click.option("--partition", help="SLURM partition for --slurm."),
        click.option("--slurm-time", help="SLURM time limit per task for --slurm (e.g. 30:00)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def check_plan(planner: Planner, slot: Slot) -> LaunchSpec:
    """Plan one slot up front so bad input fails (exit 2) before anything starts."""
    return planner(slot)


def startup_timeout_option(func: F) -> F:
    return click.option(
        "--startup-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Seconds a start may take before it counts as a startup hang "
        "(default from the profile: 1800).",
    )(func)


def stall_after_option(func: F) -> F:
    return click.option(
        "--stall-after",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Seconds without a new token before a request or the canary counts as stalled "
        "(default from the profile: 60).",
    )(func)


def load_options(func: F) -> F:
    """The load a campaign applies: workload, open or closed loop, seed, lengths, SLOs."""
    options = [
        click.option(
            "--workload",
            "-w",
            default="chat-short",
            show_default=True,
            help="Workload name (profiles/workloads/NAME.yaml) or path to a workload YAML.",
        ),
        click.option(
            "--rate",
            type=click.FloatRange(min=0, min_open=True),
            help="Open loop: requests per second.",
        ),
        click.option(
            "--concurrency",
            "-c",
            type=click.IntRange(min=1),
            help="Closed loop: requests in flight.",
        ),
        click.option(
            "--seed",
            "load_seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed of prompts, lengths and arrivals: every cell and restart sends the same.",
        ),
        click.option(
            "--prompt-tokens", type=click.IntRange(min=1), help="Fixed prompt length in tokens."
        ),
        click.option(
            "--max-tokens", type=click.IntRange(min=1), help="Fixed max_tokens for every request."
        ),
        click.option("--slo-ttft-ms", type=float, help="Goodput SLO: time to first token (ms)."),
        click.option("--slo-tpot-ms", type=float, help="Goodput SLO: time per output token (ms)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


LOAD_OPTION_NAMES = (
    "workload",
    "rate",
    "concurrency",
    "load_seed",
    "prompt_tokens",
    "max_tokens",
    "slo_ttft_ms",
    "slo_tpot_ms",
)


def load_plan_from(
    kwargs: dict[str, Any],
    *,
    stall_after: float | None = None,
    requests: int | None = None,
    duration_s: float | None = None,
) -> LoadPlan:
    """Pop the load options out of a command's keyword arguments into a checked LoadPlan."""
    from harness.campaign.loadplan import LoadPlan

    values = {name: kwargs.pop(name) for name in LOAD_OPTION_NAMES}
    return LoadPlan(
        workload=values["workload"],
        rate=values["rate"],
        concurrency=values["concurrency"],
        seed=values["load_seed"],
        prompt_tokens=values["prompt_tokens"],
        max_tokens=values["max_tokens"],
        slo_ttft_ms=values["slo_ttft_ms"],
        slo_tpot_ms=values["slo_tpot_ms"],
        stall_after_s=stall_after,
        requests=requests,
        duration_s=duration_s,
    ).check()


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(p: Progress) -> str:
    """One line: step, what it is doing, requests, incidents, elapsed and time left."""
    parts = [p.kind]
    if p.label:
        parts.append(p.label)
    parts.append(p.phase)
    done = p.requests_done()
    if done is not None:
        parts.append(f"requests {done}" + (f"/{p.requests_target}" if p.requests_target else ""))
    parts.append(f"incidents {p.incidents}")
    parts.append(f"elapsed {_fmt_s(p.elapsed_s())}")
    left = p.remaining_s()
    if left is not None:
        parts.append(f"left ~{_fmt_s(left)}")
    return " · ".join(parts)


@contextmanager
def live_progress(console: Console, progress: Progress) -> Iterator[None]:
    """A live progress line on a terminal (refreshed twice a second); elsewhere a plain line
    every 30 s. Lines the campaign prints appear above it."""
    if console.is_terminal:
        with Live(
            Text(progress_line(progress)),
            console=console,
            refresh_per_second=2,
            transient=True,
            get_renderable=lambda: Text(progress_line(progress), style="bold"),
        ):
            yield
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(30.0):
            console.print(progress_line(progress), markup=False, highlight=False)

    thread = threading.Thread(target=tick, name="harness-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)


def write_reports(run_path: Path, console: Console) -> None:
    """Write report.html and report.md of a campaign (also after an interruption); a report
    problem is reported, never raised over the campaign's own result."""
    from harness.report.build import write_report

    started = time.monotonic()
    try:
        html, md = write_report(run_path)
    except Exception as exc:  # the campaign's records stay; `harness report` can retry
        console.print(f"[yellow]report not written:[/] {type(exc).__name__}: {exc}")
        return
    console.print(f"report: {html} ({time.monotonic() - started:.1f} s), {md}")
