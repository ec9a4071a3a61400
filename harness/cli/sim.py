"""``harness sim``: the simulated OpenAI-compatible engine with injected faults."""

from __future__ import annotations

import click

from harness.cli.options import runs_dir_option
from harness.errors import PortInUse
from harness.sim.faults import FAULT_KINDS, parse_faults


@click.command(
    "sim",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "max_content_width": 100,
    },
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--tp",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Tensor-parallel size: N worker processes that exchange a message every step.",
)
@click.option(
    "--model-name",
    "--served-model-name",
    "model_name",
    default="sim-model",
    show_default=True,
    help="Model name served (/v1/models, the 'model' field).",
)
@click.option("--model", "model_root", help="Model path reported as 'root' in /v1/models.")
@click.option(
    "--ttft-ms",
    type=float,
    default=50.0,
    show_default=True,
    help="Simulated prefill time before the first token.",
)
@click.option(
    "--itl-ms",
    type=float,
    default=20.0,
    show_default=True,
    help="Engine step time: one token per running request per step.",
)
@click.option(
    "--max-num-seqs",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Requests in the batch at once; the rest wait (num_requests_waiting).",
)
@click.option("--max-model-len", type=click.IntRange(1), default=32768, show_default=True)
@click.option(
    "--startup-s",
    type=float,
    default=1.0,
    show_default=True,
    help="Simulated weight-loading time before the server listens.",
)
@click.option("--seed", type=int, help="Seed for fault decisions [default: random per start].")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="KIND:key=value,...",
    help="Inject a fault (repeatable). Kinds: " + ", ".join(FAULT_KINDS) + ".",
)
@click.option("--access-log", is_flag=True, help="Log every request (slow at high rates).")
@click.option(
    "--stats-interval",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between engine stats log lines (0: none).",
)
@runs_dir_option
@click.pass_context
def sim(
    ctx: click.Context,
    host: str,
    port: int,
    tp: int,
    model_name: str,
    model_root: str | None,
    ttft_ms: float,
    itl_ms: float,
    max_num_seqs: int,
    max_model_len: int,
    startup_s: float,
    seed: int | None,
    faults: tuple[str, ...],
    access_log: bool,
    stats_interval: float,
    runs_dir: str | None,
) -> None:
    """Run a simulated OpenAI-compatible engine (vLLM's routes, metrics and log lines).

    \b
    Faults (--fault KIND:key=value,...; times are seconds after ready):
      stall:p=0.01,after=5[,for=30]     a request stops after `after` tokens
      engine-stall:at=30[,for=S]        every request stops (the engine loop halts)
      worker-stall:rank=1,at=30[,mode=spin|sleep]
                                        with --tp N: one worker hangs in a step, its peers
                                        wait in all_reduce, the engine in collective_rpc
      crash:at=60[,code=1]              the server dies
      startup-hang:p=0.2                never becomes healthy (hangs while initializing)
      http-error:p=0.05[,status=500]    requests fail with an HTTP error
      slow-health:ms=3000               /health answers slowly

    \b
    Examples:
      harness sim --port 8000 --fault stall:p=0.05,after=3
      harness sim --tp 2 --fault worker-stall:rank=1,at=30
      harness sim --ttft-ms 0 --itl-ms 0        # near-zero-cost target for benchmarks

    Unknown options (engine arguments a profile may pass) are ignored with a warning.
    The simulator writes no run: --runs-dir is accepted (every command takes it) and not used.
    """
    del runs_dir  # accepted like every command's; `harness serve --engine sim` records the run
    import errno
    import socket

    from harness.sim.server import SimConfig, log, serve

    parsed = parse_faults(list(faults), tp=tp)
    if ctx.args:
        log(f"ignoring arguments the simulator does not use: {' '.join(ctx.args)}", "WARNING")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {host} is already in use", hint="pick another --port"
                ) from None
            raise
    config = SimConfig(
        host=host,
        port=port,
        tp=tp,
        model_name=model_name,
        model_root=model_root,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        startup_s=startup_s,
        seed=seed,
        faults=tuple(parsed),
        access_log=access_log,
        stats_interval_s=stats_interval,
    )
    serve(config)
