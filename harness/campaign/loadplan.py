"""The load a campaign applies, as data (recorded in ``campaign.json`` so that ``soak --resume``
and every compare cell rebuild exactly the same requests).

The same seed and the same workload give the same requests in the same order with the same
send schedule (:mod:`harness.load.factory`, :mod:`harness.load.arrivals`), so every cell of a
compare sees identical prompts and arrivals, and a resumed soak continues the sequence.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harness.load.runner import LoadConfig
from harness.load.workload import load_workload
from harness.report.stats import Slo
from harness.spec import LaunchSpec


class LoadPlan(BaseModel):
    """A campaign's load options (``--workload``, ``--rate`` / ``--concurrency``, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workload: str = "chat-short"
    workload_path: str | None = None
    rate: float | None = None
    concurrency: int | None = None
    requests: int | None = None
    duration_s: float | None = None
    seed: int = 0
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    stall_after_s: float | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2e_ms: float | None = None

    def check(self) -> LoadPlan:
        """Validate before anything starts (exit 2 on bad input) with the load generator's
        own rules; resolves the workload path. A soak bounds the load by its own duration."""
        workload, path = load_workload(self.workload_path or self.workload)
        bounded = self.duration_s is not None or self.requests is not None
        LoadConfig(
            workload_name=self.workload,
            workload=workload,
            rate=self.rate,
            concurrency=self.concurrency,
            duration_s=self.duration_s if bounded else 1.0,
            requests=self.requests,
            seed=self.seed,
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.max_tokens,
            stall_after_s=self.stall_after_s or 60.0,
            slo=self.slo,
        ).validate()
        return self.model_copy(update={"workload_path": str(path) if path else None})

    @property
    def slo(self) -> Slo:
        return Slo(ttft_ms=self.slo_ttft_ms, tpot_ms=self.slo_tpot_ms, e2e_ms=self.slo_e2e_ms)

    def config(
        self,
        spec: LaunchSpec,
        *,
        duration_s: float | None = None,
        requests: int | None = None,
        first_index: int = 0,
        rate: float | None = None,
    ) -> LoadConfig:
        """The :class:`LoadConfig` for one segment against ``spec``'s server (``duration_s``,
        ``requests`` and ``rate`` override the plan's, e.g. a soak's remaining time)."""
        workload, _path = load_workload(self.workload_path or self.workload)
        local_model = spec.model if Path(spec.model).is_dir() else None
        caps = [c for c in (spec.load.max_image_pixels,) if c]
        return LoadConfig(
            workload_name=self.workload,
            workload=workload,
            rate=rate if rate is not None else self.rate,
            concurrency=self.concurrency,
            duration_s=duration_s if duration_s is not None else self.duration_s,
            requests=requests if requests is not None else self.requests,
            seed=self.seed,
            stall_after_s=self.stall_after_s or spec.watch.stall_after_s,
            deadline_s=spec.deadlines.request_s,
            prompt_tokens=self.prompt_tokens,
            max_tokens=self.max_tokens,
            max_image_pixels=min(caps) if caps else None,
            max_images_per_request=spec.load.max_images_per_request,
            model=spec.served_model_name,
            tokenizer=local_model,
            slo=self.slo,
            first_index=first_index,
            api_key=spec.env.get("VLLM_API_KEY") or None,
        )
