"""How the command line reads load options: durations, vllm bench serve's spellings
(``--goodput`` with several values, ``--request-rate inf``, ``--burstiness`` alone), and the
flag names of :class:`~harness.load.config.LoadConfig`'s rules."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from harness.errors import BadInput
from harness.report.exports import DEFAULT_METRIC_PERCENTILES, parse_goodput
from harness.report.stats import Slo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

#: :class:`~harness.load.config.LoadSettingError` codes in the words of the command line
#: (``harness load``, ``soak`` and ``compare`` share these flags).
FLAG_MESSAGES = {
    "no-loop": "give --rate R (open loop) or --concurrency C (closed loop)",
    "rate": "--rate must be positive",
    "concurrency": "--concurrency must be at least 1",
    "no-bound": "give --duration S or --requests N (or both)",
    "duration": "--duration must be positive",
    "requests": "--requests must be at least 1",
    "timeouts": "--stall-after and --deadline must be positive",
    "ramp": "--ramp needs --rate (the rate to ramp to)",
    "error-budget": "--error-budget must be positive (a count, or a fraction below 1)",
    "max-image-pixels": "--max-image-pixels must be at least 1",
    "max-images-per-request": "--max-images-per-request must be at least 1",
    "metric-percentiles": "--metric-percentiles must be numbers from 0 to 100, e.g. 50,90,99",
}


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


class LoadCommand(click.Command):
    """A command that reads ``--goodput`` the way vllm bench serve does."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_goodput_values(args))


def unbounded_rate(
    rate: float | None, concurrency: int | None, requests: int | None
) -> tuple[float | None, int | None]:
    """vllm bench serve's ``--request-rate inf``: no schedule, as fast as the cap allows (a
    closed loop of ``--max-concurrency``, or of all ``--num-prompts`` at once). Returns the
    (rate, concurrency) to run with."""
    if rate is None or not (math.isinf(rate) and rate > 0):
        return rate, concurrency
    if concurrency is None:
        if requests is None:
            raise BadInput(
                "--request-rate inf (as fast as possible) needs --max-concurrency C, "
                "or --num-prompts N to send all N at once"
            )
        concurrency = requests
    return None, concurrency


def arrival_settings(arrival: str | None, burstiness: float | None) -> tuple[str, float]:
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


def slo_settings(
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


F = TypeVar("F", bound=Callable[..., Any])

#: harness load's options for what is measured and how (goodput SLOs, percentiles, windows,
#: error budget, the client's SSE handling and transport), in --help order.
_RESULT_OPTIONS = [
    click.option("--slo-ttft-ms", type=float, help="Goodput SLO: time to first token (ms)."),
    click.option("--slo-tpot-ms", type=float, help="Goodput SLO: time per output token (ms)."),
    click.option("--slo-e2e-ms", type=float, help="Goodput SLO: end-to-end latency (ms)."),
    click.option(
        "--goodput",
        "goodput_slos",
        multiple=True,
        metavar="KEY:MS ...",
        help="Goodput SLOs the vllm bench serve way: --goodput ttft:500 tpot:50 (keys ttft, "
        "tpot, e2el; milliseconds); the same as --slo-ttft-ms/--slo-tpot-ms/--slo-e2e-ms.",
    ),
    click.option(
        "--metric-percentiles",
        default=",".join(f"{p:g}" for p in DEFAULT_METRIC_PERCENTILES),
        show_default=True,
        help="Percentiles bench_result.json carries for TTFT, TPOT, ITL and E2EL "
        "(p50_ttft_ms, ...).",
    ),
    click.option(
        "--error-budget",
        type=float,
        help="Stop early when failed requests reach this count (>=1) or fraction (<1).",
    ),
    click.option("--window", type=Duration(), help="Width of the time windows in summary.json."),
    click.option(
        "--sse",
        "sse_mode",
        type=click.Choice(["lean", "full"]),
        default="lean",
        show_default=True,
        help="SSE handling: decode only the JSON chunks that matter, or all.",
    ),
    click.option(
        "--http",
        type=click.Choice(["lean", "httpx", "aiohttp"]),
        default="lean",
        show_default=True,
        help="httpx transport: harness's lean HTTP/1.1 one, httpx's "
        "default (httpcore), or aiohttp's (needs httpx-aiohttp).",
    ),
    click.option("--no-itl", is_flag=True, help="Leave per-token gaps out of requests.jsonl."),
]


def result_options(func: F) -> F:
    """Add :data:`_RESULT_OPTIONS` to a command."""
    for option in reversed(_RESULT_OPTIONS):
        func = option(func)
    return func
