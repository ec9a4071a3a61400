"""``harness load``: drive an OpenAI-compatible server with a workload and record every request.

Option parsing and printing only: the load is :mod:`harness.load` (the runner, its config and
:func:`~harness.load.interrupt.run_interruptibly`); vllm bench serve's spellings are read by
:mod:`harness.cli.loadopts`, the progress line and the summary are :mod:`harness.cli.loadview`.
"""

from __future__ import annotations

import contextlib
import json
import os

import click

from harness.cli.loadopts import (
    Duration,
    LoadCommand,
    arrival_settings,
    result_options,
    slo_settings,
    unbounded_rate,
)
from harness.cli.loadview import LoadProgress, print_summary
from harness.cli.options import runs_dir_option
from harness.errors import BadInput, CheckFailed, HarnessError
from harness.load.arrivals import ARRIVAL_KINDS
from harness.load.config import LoadConfig, RunDefaults
from harness.load.interrupt import run_interruptibly
from harness.load.runner import LoadRunner
from harness.load.workload import load_workload
from harness.report.exports import parse_metric_percentiles
from harness.rundir import RunDir, new_run_id, open_run, runs_root
from harness.spec import LaunchSpec

__all__ = ["Duration", "load"]

#: The exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


@click.command("load", cls=LoadCommand, context_settings={"max_content_width": 100})
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
@result_options
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

    A server started with an API key gets it as a bearer token from OPENAI_API_KEY (as
    `vllm bench serve` reads it), or with --run from the variable the run's engine reads
    (VLLM_API_KEY for vLLM), exported in this shell: runs/ never holds it.

    Exit code: 0 when the run finished (whatever the server did); 1 when the error budget was
    exceeded, or any request stalled and --fail-on-stall was given; 2 for bad input; 3 when the
    server cannot be reached.
    """
    if (url is None) == (run_id is None):
        raise BadInput("give exactly one of --url URL and --run RUN_ID")
    # Everything is checked before anything is created: bad flags leave no run directory.
    if url is not None and not url.startswith(("http://", "https://")):
        raise BadInput(f"--url {url!r} must start with http:// or https://")
    rate, concurrency = unbounded_rate(rate, concurrency, n_requests)
    arrival, burstiness = arrival_settings(arrival, burstiness)
    slo = slo_settings(goodput_slos, slo_ttft_ms, slo_tpot_ms, slo_e2e_ms)
    try:
        percentiles = parse_metric_percentiles(metric_percentiles)
    except ValueError as exc:
        raise BadInput(f"--metric-percentiles {metric_percentiles!r}: {exc}") from None
    wl, wl_path = load_workload(workload)
    root = runs_root(runs_dir)
    run = open_run(root, run_id) if run_id is not None else None
    spec = _launch_spec(run) if run is not None else None
    run_says = RunDefaults.of(spec)
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
        stall_after_s=stall_after or run_says.stall_after_s,
        deadline_s=deadline or run_says.deadline_s,
        drain_s=drain,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        max_image_pixels=run_says.smaller(max_image_pixels, run_says.max_image_pixels),
        max_images_per_request=run_says.smaller(
            max_images_per_request, run_says.max_images_per_request
        ),
        ignore_eos=ignore_eos,
        api=api,  # type: ignore[arg-type]
        model=model or run_says.model,
        tokenizer=tokenizer or run_says.tokenizer,
        slo=slo,
        error_budget=error_budget,
        window_s=window,
        sse_mode=sse_mode,  # type: ignore[arg-type]
        http=http,  # type: ignore[arg-type]
        keep_itl=not no_itl,
        requested_run=run_id,
        metric_percentiles=percentiles,
        api_key=api_key_from_environment(spec),
    )
    config.validate()
    created = run is None
    if run is None:
        run = RunDir(root / new_run_id("load")).create()
    click.echo(f"run {run.run_id}: {run.path}", err=True)
    runner = LoadRunner(
        config,
        base_url=spec.base_url if spec is not None else str(url),
        out_dir=run.path,
        workload_path=wl_path,
    )
    try:
        outcome = run_interruptibly(
            runner, display=None if no_progress else LoadProgress(runner.status)
        )
    except HarnessError:
        if created:  # the server could not be reached: leave no empty run directory behind
            with contextlib.suppress(OSError):
                run.path.rmdir()
        raise
    summary = outcome.summary
    if summary is None:  # a second Ctrl-C cancelled the run; summary.json is still written
        click.echo(f"interrupted; records: {run.requests}", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    for note in summary.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary, run)
    reason = str(summary["run"]["stop_reason"])
    if reason == "interrupted":
        raise SystemExit(EXIT_INTERRUPTED)
    if reason.startswith("error budget"):
        raise CheckFailed(f"{reason}; see {run.requests}")
    if fail_on_stall and summary["requests"]["stalled"]:
        raise CheckFailed(
            f"{summary['requests']['stalled']} request(s) stalled; see {run.requests}"
        )


def api_key_from_environment(spec: LaunchSpec | None) -> str | None:
    """The key to send: the run's engine variable (masked in its launch_spec.json, so taken
    from this environment), else OPENAI_API_KEY."""
    from harness.redact import is_secret_name

    if spec is not None:
        for name in spec.env:
            if is_secret_name(name) and name.endswith("API_KEY") and os.environ.get(name):
                return os.environ[name]
    return os.environ.get("OPENAI_API_KEY") or None


def _launch_spec(run: RunDir) -> LaunchSpec:
    if not run.launch_spec.exists():
        raise BadInput(f"run {run.run_id} has no launch_spec.json")
    return LaunchSpec.from_json(run.launch_spec.read_text())
