"""Result files in other tools' formats (pure): ``bench_result.json``.

``bench_result.json`` has the keys and units of the file ``vllm bench serve --save-result
--save-detailed`` writes (vLLM 0.32, ``vllm/benchmarks/serve.py``), so dashboards and scripts
that read vLLM's file read ours:

- setup: ``date`` (``%Y%m%d-%H%M%S``, local time at the end of the run), ``endpoint_type`` and
  ``backend`` (``openai-chat`` or ``openai``: the API the load used), ``label`` (null),
  ``model_id``, ``tokenizer_id``, ``num_prompts``, ``request_rate`` (requests/s, or ``"inf"``
  for a closed loop), ``burstiness`` (1.0 for Poisson, the gamma shape, ``"inf"`` for constant
  arrivals), ``max_concurrency`` (null when unbounded), and with a ramp ``ramp_up_strategy``
  (``linear``), ``ramp_up_start_rps``, ``ramp_up_end_rps``;
- totals: ``duration`` (s), ``completed``, ``failed`` (every request that did not end ``ok``:
  failed, stalled and aborted), ``total_input_tokens``, ``total_output_tokens`` (completed
  requests), ``request_throughput``, ``request_goodput`` (null without SLOs),
  ``output_throughput``, ``total_token_throughput`` (per second);
- one entry per request, in request-index order: ``input_lens``, ``output_lens`` (0 when not
  completed), ``ttfts`` (s, 0.0 without a token), ``itls`` (lists, s), ``latencies`` (s, 0.0
  when not completed), ``start_times`` (Unix s), ``queue_times`` (s: open-loop send lag, the
  wait for a ``--concurrency`` slot included; 0.0 in a closed loop), ``errors`` (``""`` when
  completed, else ``"<error>: <detail>"``);
- ``max_output_tokens_per_s`` and ``max_concurrent_requests`` (vLLM's 1-second buckets),
  ``rtfx`` (0.0);
- for each of ``ttft``, ``tpot``, ``itl``, ``e2el``: ``mean_<m>_ms``, ``median_<m>_ms``,
  ``std_<m>_ms`` and ``p<P>_<m>_ms`` for each ``--metric-percentiles`` P (``p99``, ``p99.9``),
  over completed requests, in milliseconds; 0.0 when there is none, as vLLM writes.

Left out: ``generated_texts`` (the load does not keep answers). Where harness differs:
``input_lens`` are the server's prompt token counts (chat template included) where it reported
usage; vLLM counts its dataset's prompt. Memory: the per-request lists are inherent to the format
(a file of 100,000 requests of 128 tokens holds 12.8 million ITL values); the writer
(:func:`harness.load.results.write_result_files`) streams them from ``requests.jsonl`` and keeps
about 60 bytes per request plus the latency samples, exact up to 2 million per metric, then a
1 %-accurate histogram (:class:`harness.report.stats.Distribution`).

``requests.csv`` is :mod:`harness.report.requestscsv`.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from harness.report.stats import Distribution, Slo

#: The percentiles bench_result.json carries unless told otherwise (vLLM's own default is 99).
DEFAULT_METRIC_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)

#: The metrics with mean/median/std/percentile keys, in vLLM's order.
BENCH_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")

#: The per-request lists, in vLLM's key order (between the totals and ``max_output_tokens_per_s``).
LIST_KEYS: tuple[str, ...] = (
    "input_lens",
    "output_lens",
    "ttfts",
    "itls",
    "latencies",
    "start_times",
    "queue_times",
    "errors",
)

#: vLLM's ``--goodput`` names.
GOODPUT_NAMES: tuple[str, ...] = ("ttft", "tpot", "e2el")

#: Latency samples kept exactly per metric before folding into a histogram.
EXACT_SAMPLES = 2_000_000


def percentile_key(p: float) -> str:
    """vLLM's spelling of a percentile in a key: ``99`` -> ``p99``, ``99.9`` -> ``p99.9``."""
    return "p" + (str(int(p)) if int(p) == p else str(p))


def parse_metric_percentiles(text: str) -> tuple[float, ...]:
    """``"50,90,99"`` -> ``(50.0, 90.0, 99.0)``; ValueError for anything else."""
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        value = float(part)
        if not 0 <= value <= 100 or math.isnan(value):
            raise ValueError(f"{part!r} is not a percentile from 0 to 100")
        values.append(value)
    if not values:
        raise ValueError("no percentile given")
    return tuple(values)


def parse_goodput(pairs: Iterable[str]) -> dict[str, float]:
    """vLLM's ``--goodput ttft:500 tpot:50`` (``KEY:VALUE`` in milliseconds; keys ttft, tpot,
    e2el; pairs may also be separated by commas or spaces) -> ``{"ttft": 500.0, ...}``."""
    out: dict[str, float] = {}
    for item in pairs:
        for pair in item.replace(",", " ").split():
            name, sep, value = pair.partition(":")
            name = name.strip().lower()
            if not sep or name not in GOODPUT_NAMES:
                raise ValueError(
                    f"{pair!r}: give KEY:VALUE with KEY one of {', '.join(GOODPUT_NAMES)} "
                    "and VALUE in milliseconds, e.g. ttft:500 tpot:50"
                )
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{pair!r}: {value!r} is not a number of milliseconds") from None
            if not number >= 0 or math.isinf(number):
                raise ValueError(f"{pair!r}: the SLO must be a non-negative number")
            out[name] = number
    return out


class _Samples:
    """Mean/std exactly, percentiles exactly up to ``limit`` samples (8 bytes each) then
    within 1 % (:class:`Distribution`'s histogram)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = EXACT_SAMPLES if limit is None else limit
        self.count = 0
        self.total = 0.0  # kept once folded; the exact array gives them before
        self.total_sq = 0.0
        self._exact: array[float] | None = array("d")
        self._folded: Distribution | None = None

    def add(self, value: float) -> None:
        self.extend((value,))

    def extend(self, values: Sequence[float]) -> None:
        """Add samples (C speed while exact)."""
        self.count += len(values)
        if self._exact is not None:
            self._exact.extend(values)
            if len(self._exact) > self.limit:
                arr = np.frombuffer(self._exact, dtype=np.float64)
                self.total, self.total_sq = float(arr.sum()), float((arr * arr).sum())
                self._folded = Distribution(exact_limit=0)
                for v in self._exact:
                    self._folded.add(v)
                self._exact = None
            return
        assert self._folded is not None
        for v in values:
            self.total += v
            self.total_sq += v * v
            self._folded.add(v)

    def stats(self, percentiles: Sequence[float]) -> dict[str, float]:
        """``mean``, ``median``, ``std`` and each percentile; all 0.0 without samples (vLLM
        computes ``np.mean(values or 0)``)."""
        if self.count == 0:
            return {"mean": 0.0, "median": 0.0, "std": 0.0} | {
                percentile_key(p): 0.0 for p in percentiles
            }
        if self._exact is not None:
            arr = np.frombuffer(self._exact, dtype=np.float64)
            qs = np.percentile(arr, [50.0, *percentiles])
            out = {"mean": float(arr.mean()), "median": float(qs[0]), "std": float(arr.std())}
            for p, value in zip(percentiles, qs[1:], strict=True):
                out[percentile_key(p)] = float(value)
            return out
        assert self._folded is not None
        mean = self.total / self.count
        variance = max(0.0, self.total_sq / self.count - mean * mean)
        out = {
            "mean": mean,
            "median": float(self._folded.quantile(50.0) or 0.0),
            "std": math.sqrt(variance),
        }
        for p in percentiles:
            out[percentile_key(p)] = float(self._folded.quantile(p) or 0.0)
        return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class BenchResult:
    """Builds ``bench_result.json`` from a run's ``summary.json`` and its records.

    Two passes over the records: :meth:`add` each record, in any order (totals, latency
    samples, the per-request scalars), then :meth:`add_tokens` each record again (the per-second
    token and concurrency buckets, which need the earliest start). The file is :meth:`head`,
    then the lists of :data:`LIST_KEYS` in :meth:`order` (:meth:`column`; ``itls`` is each
    record's ``itl_ms`` in seconds, :func:`itls_seconds`), then :meth:`tail`. For records in
    memory, :func:`build_bench_result` does it all.
    """

    def __init__(self, summary: Mapping[str, Any]) -> None:
        self.summary = summary
        run = summary.get("run") or {}
        self.percentiles: tuple[float, ...] = tuple(
            float(p) for p in (run.get("metric_percentiles") or DEFAULT_METRIC_PERCENTILES)
        )
        slo = (summary.get("goodput") or {}).get("slo") or {}
        self.slo = Slo(
            ttft_ms=_num(slo.get("ttft_ms")),
            tpot_ms=_num(slo.get("tpot_ms")),
            e2e_ms=_num(slo.get("e2e_ms")),
        )
        self.samples = {name: _Samples() for name in BENCH_METRICS}
        self.index: array[int] = array("q")
        self.input_lens: array[int] = array("q")
        self.output_lens: array[int] = array("q")
        self.ttfts: array[float] = array("d")
        self.latencies: array[float] = array("d")
        self.start_times: array[float] = array("d")
        self.queue_times: array[float] = array("d")
        self.errors: list[str] = []
        self._error_strings: dict[str, str] = {}
        self.completed = 0
        self.failed = 0
        self.total_input = 0
        self.total_output = 0
        self.good = 0
        self.itl_recorded = False
        self.first_path: str | None = None
        self._min_start = math.inf
        self._max_end = -math.inf
        self._tokens: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self._concurrent: np.ndarray[Any, np.dtype[np.float64]] | None = None

    # ------------------------------------------------------------------ pass 1

    def add(self, rec: Mapping[str, Any]) -> None:
        """Account one requests.jsonl record."""
        ok = rec.get("status") == "ok"
        index = rec.get("index")
        self.index.append(int(index) if isinstance(index, int) else len(self.index))
        if self.first_path is None and isinstance(rec.get("path"), str):
            self.first_path = rec["path"]
        prompt = int(_num(rec.get("prompt_tokens")) or 0)
        output = int(_num(rec.get("output_tokens")) or 0) if ok else 0
        ttft_s = (_num(rec.get("ttft_ms")) or 0.0) / 1000.0
        e2e_s = (_num(rec.get("e2e_ms")) or 0.0) / 1000.0 if ok else 0.0
        start = _num(rec.get("sent_at")) or 0.0
        sent_s, scheduled_s = _num(rec.get("sent_s")), _num(rec.get("scheduled_s"))
        queue = (
            max(0.0, sent_s - scheduled_s)
            if sent_s is not None and scheduled_s is not None
            else 0.0
        )
        self.input_lens.append(prompt)
        self.output_lens.append(output)
        self.ttfts.append(ttft_s)
        self.latencies.append(e2e_s)
        self.start_times.append(start)
        self.queue_times.append(queue)
        if "itl_ms" in rec:
            self.itl_recorded = True
        if ok:
            self.completed += 1
            self.total_input += prompt
            self.total_output += output
            self.errors.append("")
            self.samples["ttft"].add(ttft_s * 1000.0)
            self.samples["e2el"].add(e2e_s * 1000.0)
            # vLLM's TPOT, (latency - ttft) / (output - 1), from the same rounded inputs (the
            # record's own tpot_ms is rounded once more); 0 for goodput when output <= 1.
            tpot_ms = (e2e_s - ttft_s) * 1000.0 / (output - 1) if output > 1 else 0.0
            if output > 1:
                self.samples["tpot"].add(tpot_ms)
            gaps = rec.get("itl_ms")
            if gaps:
                self.samples["itl"].extend([float(g) for g in gaps])
            slo = self.slo
            if slo.active and all(
                limit is None or value <= limit
                for value, limit in (
                    (ttft_s * 1000.0, slo.ttft_ms),
                    (tpot_ms, slo.tpot_ms),
                    (e2e_s * 1000.0, slo.e2e_ms),
                )
            ):
                self.good += 1
            self._min_start = min(self._min_start, start)
            self._max_end = max(self._max_end, start + e2e_s)
        else:
            self.failed += 1
            error = str(rec.get("error") or rec.get("status") or "failed")
            detail = rec.get("error_detail")
            text = f"{error}: {detail}" if detail else error
            self.errors.append(self._error_strings.setdefault(text, text))

    def order(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Positions of the added records sorted by request index (vLLM's order)."""
        return np.argsort(np.frombuffer(self.index, dtype=np.int64), kind="stable")

    # ------------------------------------------------------------------ pass 2

    def add_tokens(self, rec: Mapping[str, Any]) -> None:
        """Add one completed record's token times to the per-second buckets (vLLM's
        ``max_output_tokens_per_s`` / ``max_concurrent_requests``)."""
        if rec.get("status") != "ok" or not math.isfinite(self._min_start):
            return
        if self._tokens is None:
            span = math.ceil(self._max_end - self._min_start) + 1
            self._tokens = np.zeros(span)
            self._concurrent = np.zeros(span)
        assert self._concurrent is not None
        start = _num(rec.get("sent_at")) or 0.0
        first = start + (_num(rec.get("ttft_ms")) or 0.0) / 1000.0
        # vLLM: the first token at start + ttft, each next one an ITL later.
        gaps = rec.get("itl_ms") or ()
        size = len(self._tokens)
        origin = self._min_start
        if len(gaps) > 64:
            times = np.cumsum(np.concatenate(([first], np.asarray(gaps, dtype=np.float64) / 1e3)))
            buckets = (times - origin).astype(np.int64)
            buckets = buckets[(buckets >= 0) & (buckets < size)]
            seconds, counts = np.unique(buckets, return_counts=True)
            self._tokens[seconds] += counts
        else:  # a Python loop is cheaper than numpy's per-call cost for short answers
            tokens = self._tokens
            t = first
            bucket = int(t - origin)
            if 0 <= bucket < size:
                tokens[bucket] += 1
            for gap in gaps:
                t += gap / 1000.0
                bucket = int(t - origin)
                if 0 <= bucket < size:
                    tokens[bucket] += 1
        end = start + (_num(rec.get("e2e_ms")) or 0.0) / 1000.0
        begin_s, end_s = int(start - self._min_start), int(end - self._min_start)
        self._concurrent[max(0, begin_s) : min(size, end_s + 1)] += 1

    # ------------------------------------------------------------------ the file

    def head(self) -> dict[str, Any]:
        """The keys before the per-request lists: setup and totals."""
        s = self.summary
        run = s.get("run") or {}
        requested = (s.get("rate") or {}).get("requested")
        mode = run.get("mode") or ("open" if requested else "closed")
        arrival = run.get("arrival")
        api = run.get("api") or (
            "completions" if (self.first_path or "").endswith("/v1/completions") else "chat"
        )
        backend = "openai" if api == "completions" else "openai-chat"
        burstiness: float | str = 1.0
        if mode == "open" and arrival == "constant":
            burstiness = "inf"
        elif mode == "open" and arrival == "gamma":
            burstiness = float(run.get("burstiness") or 1.0)
        started = _num(run.get("started_at")) or 0.0
        duration = _num(run.get("elapsed_s")) or 0.0
        sent = (s.get("requests") or {}).get("sent")
        out: dict[str, Any] = {
            "date": time.strftime("%Y%m%d-%H%M%S", time.localtime(started + duration)),
            "endpoint_type": backend,
            "backend": backend,
            "label": None,
            "model_id": run.get("model"),
            "tokenizer_id": run.get("tokenizer") or run.get("model"),
            "num_prompts": run.get("requests") or sent or len(self.index),
            "request_rate": float(requested) if mode == "open" and requested else "inf",
            "burstiness": burstiness,
            "max_concurrency": run.get("concurrency"),
        }
        ramp = run.get("ramp")
        if mode == "open" and isinstance(ramp, Mapping):
            out["ramp_up_strategy"] = "linear"
            out["ramp_up_start_rps"] = ramp.get("from")
            out["ramp_up_end_rps"] = requested

        def per_s(n: int) -> float:
            return n / duration if duration > 0 else 0.0

        out |= {
            "duration": duration,
            "completed": self.completed,
            "failed": self.failed,
            "total_input_tokens": self.total_input,
            "total_output_tokens": self.total_output,
            "request_throughput": per_s(self.completed),
            "request_goodput": per_s(self.good) if self.slo.active else None,
            "output_throughput": per_s(self.total_output),
            "total_token_throughput": per_s(self.total_input + self.total_output),
        }
        return out

    def column(self, key: str) -> Sequence[Any]:
        """One per-request list other than ``itls`` (:data:`LIST_KEYS`), in the order the
        records were added; index it with :meth:`order`."""
        columns: dict[str, Sequence[Any]] = {
            "input_lens": self.input_lens,
            "output_lens": self.output_lens,
            "ttfts": self.ttfts,
            "latencies": self.latencies,
            "start_times": self.start_times,
            "queue_times": self.queue_times,
            "errors": self.errors,
        }
        return columns[key]

    def tail(self) -> dict[str, Any]:
        """The keys after the lists: peaks, ``rtfx`` and the latency statistics (ms)."""
        tokens = self._tokens
        concurrent = self._concurrent
        out: dict[str, Any] = {
            "max_output_tokens_per_s": float(tokens.max()) if tokens is not None else 0.0,
            "max_concurrent_requests": int(concurrent.max()) if concurrent is not None else 0,
            "rtfx": 0.0,
        }
        for metric in BENCH_METRICS:
            if metric == "itl" and not self.itl_recorded and self.completed:
                # Recorded with --no-itl: the gaps are not in requests.jsonl.
                stats: dict[str, float | None] = dict.fromkeys(
                    ["mean", "median", "std", *map(percentile_key, self.percentiles)]
                )
            else:
                stats = dict(self.samples[metric].stats(self.percentiles))
            out[f"mean_{metric}_ms"] = stats["mean"]
            out[f"median_{metric}_ms"] = stats["median"]
            out[f"std_{metric}_ms"] = stats["std"]
            for p in self.percentiles:
                out[f"{percentile_key(p)}_{metric}_ms"] = stats[percentile_key(p)]
        return out


def itls_seconds(rec: Mapping[str, Any]) -> list[float]:
    """A record's inter-token gaps in seconds (vLLM's ``itls`` entry)."""
    return [float(gap) / 1000.0 for gap in rec.get("itl_ms") or ()]


def build_bench_result(
    summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The whole ``bench_result.json`` document for records held in memory."""
    builder = BenchResult(summary)
    for rec in records:
        builder.add(rec)
    order = builder.order()
    for i in order:
        builder.add_tokens(records[i])
    out = builder.head()
    for key in LIST_KEYS:
        if key == "itls":
            out[key] = [itls_seconds(records[i]) for i in order]
        else:
            column = builder.column(key)
            out[key] = [column[i] for i in order]
    return out | builder.tail()


__all__ = [
    "BENCH_METRICS",
    "DEFAULT_METRIC_PERCENTILES",
    "LIST_KEYS",
    "BenchResult",
    "build_bench_result",
    "itls_seconds",
    "parse_goodput",
    "parse_metric_percentiles",
    "percentile_key",
]
