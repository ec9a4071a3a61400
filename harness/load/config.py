"""What a load run is asked to do (pure): :class:`LoadConfig`, its rules, and what its open-loop
schedule should send.

Validation messages name the settings, not command-line flags: each rule has a stable
:attr:`LoadSettingError.code`, so a front end words it with its own option names (the command
line says ``--rate must be positive`` where the library says ``rate must be positive``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import BadInput
from harness.load.arrivals import ArrivalKind, Arrivals
from harness.load.factory import Overrides
from harness.load.replay import ReplayItem
from harness.load.sse import SSEMode
from harness.load.workload import Workload
from harness.report.exports import DEFAULT_METRIC_PERCENTILES
from harness.report.loadsummary import Sends
from harness.report.stats import Slo
from harness.spec import LaunchSpec


class LoadSettingError(BadInput):
    """A :class:`LoadConfig` setting out of range or contradicting another (exit 2).

    ``code`` names the rule (``"rate"``, ``"no-loop"``, ...; see :meth:`LoadConfig.validate`).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LoadConfig:
    """Everything a load run needs besides the server address and the output directory.

    Exactly one of ``rate`` (open loop; requests/s, the end rate of a ramp) and ``concurrency``
    (closed loop) is usually given; both together mean "the rate, with at most ``concurrency``
    in flight". At least one of ``duration_s`` and ``requests`` should bound the run.
    """

    workload_name: str = "chat-short"
    workload: Workload | None = None  # given directly instead of by name
    rate: float | None = None
    concurrency: int | None = None
    duration_s: float | None = None
    requests: int | None = None
    seed: int = 0
    arrival: ArrivalKind = "poisson"
    burstiness: float = 1.0
    ramp_from: float | None = None
    ramp_s: float = 0.0
    stall_after_s: float = 60.0
    deadline_s: float = 600.0
    drain_s: float | None = None
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    max_image_pixels: int | None = None
    max_images_per_request: int | None = None
    ignore_eos: bool | None = None
    api: Literal["chat", "completions"] | None = None
    model: str | None = None
    tokenizer: str | None = None
    slo: Slo = field(default_factory=Slo)
    error_budget: float | None = None
    window_s: float | None = None
    sse_mode: SSEMode = "lean"
    http: Literal["lean", "httpx", "aiohttp"] = "lean"
    keep_itl: bool = True
    requested_run: str | None = None  # informational: --run RUN_ID
    # Number of the first request: a resumed or restarted campaign continues the same seeded
    # sequence (request i is always the same prompt) without reusing an index already recorded.
    first_index: int = 0
    # Percentiles bench_result.json carries (``vllm bench serve --metric-percentiles``).
    metric_percentiles: tuple[float, ...] = DEFAULT_METRIC_PERCENTILES
    # Publish the requests in flight to out_dir/inflight.json for the watchdog.
    publish_inflight: bool = True
    # Sent as "Authorization: Bearer ..." (a server started with an API key). Never recorded:
    # summary.json and the result files do not hold it.
    api_key: str | None = field(default=None, repr=False)
    # harness replay: these requests at their offsets instead of the workload and the arrivals
    # (with ``requests`` = their number; ``rate`` is then only the open loop's switch).
    replay: tuple[ReplayItem, ...] = ()

    def validate(self) -> None:
        """Raise :class:`LoadSettingError` for contradictory or out-of-range settings."""
        for code, broken, message in (
            ("no-loop", self.rate is None and self.concurrency is None,
             "give a rate (open loop) or a concurrency (closed loop)"),
            ("rate", self.rate is not None and not self.rate > 0, "rate must be positive"),
            ("concurrency", self.concurrency is not None and self.concurrency < 1,
             "concurrency must be at least 1"),
            ("no-bound", self.duration_s is None and self.requests is None,
             "give a duration or a number of requests (or both)"),
            ("duration", self.duration_s is not None and not self.duration_s > 0,
             "duration must be positive"),
            ("requests", self.requests is not None and self.requests < 1,
             "requests must be at least 1"),
            ("timeouts", not self.stall_after_s > 0 or not self.deadline_s > 0,
             "the stall timeout and the request deadline must be positive"),
            ("ramp", bool(self.ramp_s) and self.rate is None,
             "a ramp needs a rate (the rate to ramp to)"),
            ("error-budget", self.error_budget is not None and self.error_budget <= 0,
             "the error budget must be positive (a count, or a fraction below 1)"),
            ("max-image-pixels", self.max_image_pixels is not None and self.max_image_pixels < 1,
             "max_image_pixels must be at least 1"),
            ("max-images-per-request",
             self.max_images_per_request is not None and self.max_images_per_request < 1,
             "max_images_per_request must be at least 1"),
            ("first-index", self.first_index < 0,
             "the first request index must not be negative"),
            ("metric-percentiles",
             not self.metric_percentiles or not all(0 <= p <= 100 for p in self.metric_percentiles),
             "metric percentiles must be numbers from 0 to 100, e.g. 50,90,99"),
        ):  # fmt: skip
            if broken:
                raise LoadSettingError(code, message)

    def overrides(self) -> Overrides:
        """What this run sets over its workload's request shapes."""
        return Overrides(
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.max_tokens,
            max_image_pixels=self.max_image_pixels,
            max_images_per_request=self.max_images_per_request,
            ignore_eos=self.ignore_eos,
            api=self.api,
        )

    def over_budget(self, failed: int, finished: int) -> bool:
        """Whether ``failed`` of ``finished`` requests exceed the error budget (a count, or a
        fraction once 20 requests finished)."""
        budget = self.error_budget
        if budget is None:
            return False
        if budget >= 1:
            return failed >= budget
        return finished >= 20 and failed / finished > budget

    def arrivals(self) -> Arrivals | None:
        """The open-loop schedule (None for a closed loop)."""
        if self.rate is None:
            return None
        return Arrivals(
            rate=self.rate,
            kind=self.arrival,
            burstiness=self.burstiness,
            ramp_from=self.ramp_from,
            ramp_s=self.ramp_s,
            seed=self.seed,
        )

    def expected_sends(self) -> dict[str, Any] | None:
        """How many requests the open-loop schedule sends over ``duration_s``, on average and
        for 95 % of seeds (``{"mean", "low", "high"}``); None without a rate and a duration."""
        arrivals = self.arrivals()
        if arrivals is None or self.duration_s is None:
            return None
        low, high = arrivals.count_range(self.duration_s)
        return {
            "mean": round(arrivals.expected_count(self.duration_s), 3),
            "low": low,
            "high": high,
        }


def expected_note(cfg: LoadConfig, expected: Mapping[str, Any], sent: int) -> str | None:
    """A note on the realised vs requested rate of a short or unlucky open-loop schedule
    (None for a run long enough that the count is close to its expectation)."""
    duration = cfg.duration_s or 0.0
    kind = {"poisson": "Poisson", "gamma": "gamma", "constant": "constant"}[cfg.arrival]
    rate = cfg.rate or 0.0
    what = (
        f"{kind} arrivals at {rate:g}/s"
        + (f" (ramp from {cfg.ramp_from or 0.0:g}/s over {cfg.ramp_s:g} s)" if cfg.ramp_s else "")
        + f" over {duration:g} s send {expected['mean']:g} requests on average"
    )
    low, high = expected["low"], expected["high"]
    if cfg.arrival != "constant":
        what += f" (95 % of seeds: {low} to {high})"
    if not low <= sent <= high:
        return (
            f"{what}; this run sent {sent} (seed {cfg.seed} drew an unusual schedule, "
            f"realised {sent / duration:.3g}/s): a longer --duration or several --seed values "
            "give a rate closer to the one requested"
        )
    spread = (high - low) / 2 / expected["mean"] if expected["mean"] else 0.0
    if cfg.arrival != "constant" and spread > 0.1:
        return (
            f"short run: {what}; this run sent {sent}. The realised rate of so short a run "
            f"varies by about ±{spread:.0%} from seed to seed"
        )
    return None


@dataclass(frozen=True)
class RunDefaults:
    """What a run harness started says about loading it: used where the user gave nothing
    (stall timeout, request deadline, served model name, the local model directory as the
    tokenizer); its image limits cap the user's (the smaller wins)."""

    stall_after_s: float = 60.0
    deadline_s: float = 600.0
    model: str | None = None
    tokenizer: str | None = None
    max_image_pixels: int | None = None
    max_images_per_request: int | None = None

    @classmethod
    def of(cls, spec: LaunchSpec | None) -> RunDefaults:
        """The defaults of ``spec``'s run (plain defaults for a server harness did not start)."""
        if spec is None:
            return cls()
        return cls(
            stall_after_s=spec.watch.stall_after_s,
            deadline_s=spec.deadlines.request_s,
            model=spec.served_model_name,
            tokenizer=spec.model if Path(spec.model).is_dir() else None,
            max_image_pixels=spec.load.max_image_pixels,
            max_images_per_request=spec.load.max_images_per_request,
        )

    @staticmethod
    def smaller(given: int | None, run: int | None) -> int | None:
        """The stricter of two optional limits."""
        limits = [c for c in (given, run) if c]
        return min(limits) if limits else None


def rate_notes(
    cfg: LoadConfig, rate: Mapping[str, Any], expected: Mapping[str, Any] | None, sends: Sends
) -> list[str]:
    """What the summary says about the rate: a short or unlucky schedule (:func:`expected_note`)
    or a ``--concurrency`` that held the sends back (``rate`` is the summary's rate block)."""
    notes: list[str] = []
    capped = rate["capped_by_concurrency"]
    # When the cap held the sends back, the cap (noted below) explains the count.
    if expected is not None and capped is None:
        note = expected_note(cfg, expected, sends.count)
        if note is not None:
            notes.append(note)
    if capped is not None:
        lag = sends.lag_ms.quantile(50)
        notes.append(
            f"--concurrency {cfg.concurrency} capped the rate: {capped['waited']} of "
            f"{sends.count} sends waited for a free slot (send lag p50 "
            f"{'-' if lag is None else f'{lag:.0f} ms'}); achieved {rate['achieved']}/s "
            f"of the {cfg.rate:g}/s requested"
        )
    return notes
