"""``harness load``: drive an OpenAI-compatible server with a workload and record every request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from harness.cli.options import runs_dir_option
from harness.errors import BadInput, CheckFailed, HarnessError
from harness.load.arrivals import ARRIVAL_KINDS
from harness.load.results import BENCH_RESULT_FILE
from harness.load.runner import LoadConfig, LoadRunner, Summary
from harness.load.workload import available_workloads, load_workload
from harness.report.exports import (
    DEFAULT_METRIC_PERCENTILES,
    parse_goodput,
    parse_metric_percentiles,
)
from harness.report.stats import Slo
from harness.rundir import RunDir, new_run_id, open_run, runs_root
from harness.sim.http import event_loop_factory
from harness.spec import LaunchSpec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1.5d`` -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 90, 90s, 15m, 2h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


def join_goodput_values(args: list[str]) -> list[str]:
    """``--goodput ttft:500 tpot:50`` (vLLM's spelling: several values after one option) ->
    ``--goodput "ttft:500 tpot:50"``. The command has no positional arguments, so every bare
    word after ``--goodput`` belongs to it."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        if arg == "--goodput" or arg.startswith("--goodput="):
            values = [arg.partition("=")[2]] if "=" in arg else []
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                i += 1
                values.append(args[i])
            out.append("--goodput")
            if values:
                out.append(" ".join(v for v in values if v))
        else:
            out.append(arg)
        i += 1
    return out


class _LoadCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_goodput_values(args))


@click.command("load", cls=_LoadCommand, context_settings={"max_content_width": 100})
@click.option(
    "--url",
    "--base-url",
    "url",
    help="Base URL of any OpenAI-compatible server, e.g. http://127.0.0.1:8000.",
)
@click.option(
    "--run",
    "run_id",
    help="A run harness started: its server, model and limits are used "
    "and requests are recorded into its run directory.",
)
@click.option(
    "--workload",
    "-w",
    default="chat-short",
    show_default=True,
    help="Workload name (profiles/workloads/NAME.yaml) or path to a workload YAML.",
)
@click.option(
    "--rate",
    "--request-rate",
    "rate",
    type=float,
    help="Open loop: requests per second (the end rate of --ramp). 'inf': as fast as possible, "
    "a closed loop of --concurrency (or of all --requests at once, as vllm bench serve does).",
)
@click.option(
    "--concurrency",
    "--max-concurrency",
    "-c",
    "concurrency",
    type=int,
    help="Closed loop: this many requests in flight, back to back. With --rate: a cap.",
)
@click.option("--duration", type=Duration(), help="Stop sending after this long (90, 15m, 2h).")
@click.option(
    "--requests",
    "--num-prompts",
    "-n",
    "n_requests",
    type=int,
    help="Stop after sending N requests.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for prompts, lengths, images and arrivals: same seed, same requests.",
)
@click.option(
    "--arrival",
    type=click.Choice(ARRIVAL_KINDS),
    help="Open-loop arrival process [default: poisson; gamma when --burstiness is not 1].",
)
@click.option(
    "--burstiness",
    type=float,
    help="Gamma shape: 1 = Poisson, <1 burstier, >1 smoother (alone it implies --arrival "
    "gamma, as in vllm bench serve) [default: 1].",
)
@click.option(
    "--ramp", type=Duration(), help="Ramp linearly from --ramp-from to --rate over this long."
)
@click.option(
    "--ramp-from",
    type=float,
    default=0.0,
    show_default=True,
    help="Start rate of the ramp (requests/s).",
)
@click.option(
    "--stall-after",
    type=Duration(),
    help="Token-stall timeout: a request with no new token for this long is recorded as "
    "'stalled' and the run goes on [default: the run's watch setting, else 60s].",
)
@click.option(
    "--deadline",
    type=Duration(),
    help="Per-request deadline [default: the run's request deadline, else 600s].",
)
@click.option(
    "--drain",
    type=Duration(),
    help="After sending stops, wait at most this long for requests in flight "
    "(the rest are recorded 'aborted') [default: until each ends or times out].",
)
@click.option(
    "--prompt-tokens", type=int, help="Fixed prompt length in tokens (synthetic prompts)."
)
@click.option("--max-tokens", type=int, help="Fixed max_tokens for every request.")
@click.option(
    "--ignore-eos/--no-ignore-eos",
    default=None,
    help="Ask the server to generate exactly max_tokens (vLLM, LMDeploy).",
)
@click.option(
    "--api", type=click.Choice(["chat", "completions"]), help="Override the workload's API."
)
@click.option(
    "--max-image-pixels",
    type=click.IntRange(min=1),
    help="Scale images down to at most this many pixels (the vlm-safe limit; with --run, "
    "the run's limit applies too).",
)
@click.option(
    "--max-images-per-request",
    type=click.IntRange(min=1),
    help="Send at most this many images per request (the server's --limit-mm-per-prompt; "
    "with --run, the run's vlm-safe limit applies too).",
)
@click.option(
    "--model",
    help="Model name to send [default: the run's served name, or the first model of /v1/models].",
)
@click.option(
    "--tokenizer",
    help="Local model directory or tokenizer.json for exact prompt lengths "
    "[default: the model path if it is local, else an approximation].",
)
@click.option("--slo-ttft-ms", type=float, help="Goodput SLO: time to first token (ms).")
@click.option("--slo-tpot-ms", type=float, help="Goodput SLO: time per output token (ms).")
@click.option("--slo-e2e-ms", type=float, help="Goodput SLO: end-to-end latency (ms).")
@click.option(
    "--goodput",
    "goodput_slos",
    multiple=True,
    metavar="KEY:MS ...",
    help="Goodput SLOs the vllm bench serve way: --goodput ttft:500 tpot:50 (keys ttft, tpot, "
    "e2el; milliseconds); the same as --slo-ttft-ms/--slo-tpot-ms/--slo-e2e-ms.",
)
@click.option(
    "--metric-percentiles",
    default=",".join(f"{p:g}" for p in DEFAULT_METRIC_PERCENTILES),
    show_default=True,
    help="Percentiles bench_result.json carries for TTFT, TPOT, ITL and E2EL (p50_ttft_ms, ...).",
)
@click.option(
    "--error-budget",
    type=float,
    help="Stop early when failed requests reach this count (>=1) or fraction (<1).",
)
@click.option("--window", type=Duration(), help="Width of the time windows in summary.json.")
@click.option(
    "--sse",
    "sse_mode",
    type=click.Choice(["lean", "full"]),
    default="lean",
    show_default=True,
    help="SSE handling: decode only the JSON chunks that matter, or all.",
)
@click.option(
    "--http",
    type=click.Choice(["lean", "httpx", "aiohttp"]),
    default="lean",
    show_default=True,
    help="httpx transport: harness's lean HTTP/1.1 one, httpx's "
    "default (httpcore), or aiohttp's (needs httpx-aiohttp).",
)
@click.option("--no-itl", is_flag=True, help="Leave per-token gaps out of requests.jsonl.")
@click.option("--fail-on-stall", is_flag=True, help="Exit 1 if any request stalled.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout at the end.")
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@runs_dir_option
def load(
    url: str | None,
    run_id: str | None,
    workload: str,
    rate: float | None,
    concurrency: int | None,
    duration: float | None,
    n_requests: int | None,
    seed: int,
    arrival: str | None,
    burstiness: float | None,
    ramp: float | None,
    ramp_from: float,
    stall_after: float | None,
    deadline: float | None,
    drain: float | None,
    prompt_tokens: int | None,
    max_tokens: int | None,
    ignore_eos: bool | None,
    api: str | None,
    max_image_pixels: int | None,
    max_images_per_request: int | None,
    model: str | None,
    tokenizer: str | None,
    slo_ttft_ms: float | None,
    slo_tpot_ms: float | None,
    slo_e2e_ms: float | None,
    goodput_slos: tuple[str, ...],
    metric_percentiles: str,
    error_budget: float | None,
    window: float | None,
    sse_mode: str,
    http: str,
    no_itl: bool,
    fail_on_stall: bool,
    as_json: bool,
    no_progress: bool,
    runs_dir: str | None,
) -> None:
    """Load an OpenAI-compatible server with a workload; record every request.

    \b
    Examples:
      harness load --url http://127.0.0.1:8000 -w chat-short -c 64 -n 2000
      harness load --run 20261124-101502-vllm-tp2-3fa9 -w vlm-mixed --rate 2 --duration 2h
      harness load --url URL -w chat-short --rate 50 --arrival gamma --burstiness 0.5 \\
          --ramp 5m --ramp-from 1 --duration 1h --stall-after 30s --slo-ttft-ms 500

    Each finished request is appended (and flushed) to RUN/requests.jsonl with status ok,
    failed, stalled or aborted; RUN/summary.json gets percentiles (p50/p90/p99/p99.9) of TTFT,
    ITL, TPOT and E2E, throughput, requested vs achieved rate, goodput and time windows.
    A stalled request never holds the client: after --stall-after without a token (or the
    --deadline) it is recorded as 'stalled' with the time of its last token.

    Exit code: 0 when the run finished (whatever the server did); 1 when the error budget was
    exceeded, or any request stalled and --fail-on-stall was given; 2 for bad input; 3 when the
    server cannot be reached.
    """
    if (url is None) == (run_id is None):
        raise BadInput("give exactly one of --url URL and --run RUN_ID")
    # Everything is checked before anything is created: bad flags leave no run directory.
    if url is not None and not url.startswith(("http://", "https://")):
        raise BadInput(f"--url {url!r} must start with http:// or https://")
    if rate is not None and math.isinf(rate) and rate > 0:
        # vllm bench serve's --request-rate inf: no schedule, as fast as the cap allows.
        rate = None
        if concurrency is None:
            if n_requests is None:
                raise BadInput(
                    "--request-rate inf (as fast as possible) needs --max-concurrency C, "
                    "or --num-prompts N to send all N at once"
                )
            concurrency = n_requests
    arrival, burstiness = _arrival(arrival, burstiness)
    slo = _slo(goodput_slos, slo_ttft_ms, slo_tpot_ms, slo_e2e_ms)
    try:
        percentiles = parse_metric_percentiles(metric_percentiles)
    except ValueError as exc:
        raise BadInput(f"--metric-percentiles {metric_percentiles!r}: {exc}") from None
    wl, wl_path = load_workload(workload)
    root = runs_root(runs_dir)
    spec: LaunchSpec | None = None
    run: RunDir | None = None
    if run_id is not None:
        run = open_run(root, run_id)
        if not run.launch_spec.exists():
            raise BadInput(f"run {run.run_id} has no launch_spec.json")
        spec = LaunchSpec.from_json(run.launch_spec.read_text())
        base_url = spec.base_url
    else:
        assert url is not None
        base_url = url

    caps = [c for c in (max_image_pixels, spec.load.max_image_pixels if spec else None) if c]
    image_limits = [
        c for c in (max_images_per_request, spec.load.max_images_per_request if spec else None) if c
    ]
    config = LoadConfig(
        workload_name=workload,
        workload=wl,
        rate=rate,
        concurrency=concurrency,
        duration_s=duration,
        requests=n_requests,
        seed=seed,
        arrival=arrival,  # type: ignore[arg-type]
        burstiness=burstiness,
        ramp_from=ramp_from if ramp else None,
        ramp_s=ramp or 0.0,
        stall_after_s=stall_after or (spec.watch.stall_after_s if spec else 60.0),
        deadline_s=deadline or (spec.deadlines.request_s if spec else 600.0),
        drain_s=drain,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        max_image_pixels=min(caps) if caps else None,
        max_images_per_request=min(image_limits) if image_limits else None,
        ignore_eos=ignore_eos,
        api=api,  # type: ignore[arg-type]
        model=model or (spec.served_model_name if spec else None),
        tokenizer=tokenizer or (spec.model if spec and Path(spec.model).is_dir() else None),
        slo=slo,
        error_budget=error_budget,
        window_s=window,
        sse_mode=sse_mode,  # type: ignore[arg-type]
        http=http,  # type: ignore[arg-type]
        keep_itl=not no_itl,
        requested_run=run_id,
        metric_percentiles=percentiles,
    )
    config.validate()
    created = run is None
    if run is None:
        run = RunDir(root / new_run_id("load")).create()
    click.echo(f"run {run.run_id}: {run.path}", err=True)
    runner = LoadRunner(
        config,
        base_url=base_url,
        out_dir=run.path,
        progress=not no_progress,
        workload_path=wl_path,
    )
    try:
        summary = _run(runner)
    except HarnessError:
        if created:  # the server could not be reached: leave no empty run directory behind
            with contextlib.suppress(OSError):
                run.path.rmdir()
        raise
    if summary is None:  # a second Ctrl-C cancelled the run; summary.json is still written
        click.echo(f"interrupted; records: {run.requests}", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    for note in summary.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, run)
    reason = str(summary["run"]["stop_reason"])
    if reason == "interrupted":
        raise SystemExit(EXIT_INTERRUPTED)
    if reason.startswith("error budget"):
        raise CheckFailed(f"{reason}; see {run.requests}")
    if fail_on_stall and summary["requests"]["stalled"]:
        raise CheckFailed(
            f"{summary['requests']['stalled']} request(s) stalled; see {run.requests}"
        )


def _arrival(arrival: str | None, burstiness: float | None) -> tuple[str, float]:
    """``--arrival`` and ``--burstiness`` as vllm bench serve reads them: a burstiness other
    than 1 alone means gamma arrivals."""
    if burstiness is not None and not burstiness > 0:
        raise BadInput("--burstiness must be positive (the gamma shape: 1 = Poisson)")
    if arrival is None:
        arrival = "gamma" if burstiness is not None and burstiness != 1.0 else "poisson"
    elif arrival != "gamma" and burstiness is not None and burstiness != 1.0:
        raise BadInput(
            f"--burstiness {burstiness:g} is the gamma shape; it does not apply to "
            f"--arrival {arrival}",
            hint="use --arrival gamma, or leave --arrival out",
        )
    return arrival, burstiness if burstiness is not None else 1.0


def _slo(
    goodput_slos: tuple[str, ...],
    ttft_ms: float | None,
    tpot_ms: float | None,
    e2e_ms: float | None,
) -> Slo:
    """The goodput SLOs from --goodput (vLLM's names) and the --slo-*-ms options."""
    try:
        pairs = parse_goodput(goodput_slos)
    except ValueError as exc:
        raise BadInput(f"--goodput: {exc}") from None
    values: dict[str, float | None] = {"ttft": ttft_ms, "tpot": tpot_ms, "e2el": e2e_ms}
    for name, value in pairs.items():
        if values[name] is not None and values[name] != value:
            option = {"ttft": "--slo-ttft-ms", "tpot": "--slo-tpot-ms", "e2el": "--slo-e2e-ms"}
            raise BadInput(
                f"--goodput {name}:{value:g} contradicts {option[name]} {values[name]:g}"
            )
        values[name] = value
    for name, limit in values.items():
        if limit is not None and not limit >= 0:
            raise BadInput(f"the {name} SLO must be a non-negative number of milliseconds")
    return Slo(ttft_ms=values["ttft"], tpot_ms=values["tpot"], e2e_ms=values["e2el"])


#: The exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def _run(runner: LoadRunner) -> Summary | None:
    """Run the load; None when a second Ctrl-C (or SIGTERM) cancelled it outright."""

    async def main() -> Summary | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def interrupt() -> None:
            # First Ctrl-C: stop, abort what is in flight, still write the summary.
            # Second: cancel outright.
            if runner._stop_reason == "interrupted" and task is not None:
                task.cancel()
            runner.stop("interrupted", hard=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, interrupt)
        try:
            return await runner.run()
        except asyncio.CancelledError:
            return None

    with asyncio.Runner(loop_factory=event_loop_factory()) as r:
        return r.run(main())


def _stdout_console() -> Console:
    """Rich console on stdout; output that is not a terminal (a pipe, a log file) is never
    wrapped, so paths and numbers stay on one line."""
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console = Console(file=sys.stdout, soft_wrap=True)
    return console


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


def _print_summary(summary: Summary, run: RunDir) -> None:
    from rich.markup import escape
    from rich.table import Table

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


__all__ = ["available_workloads", "join_goodput_values", "load", "parse_duration", "rate_line"]
