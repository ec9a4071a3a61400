"""``requests.csv`` (pure): one row per line of ``requests.jsonl``, the scalar fields in
:data:`CSV_COLUMNS` (empty cell for null) plus ``image_count``, for spreadsheets and pandas
(:func:`harness.load.results.write_result_files` writes it next to ``bench_result.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The columns of requests.csv: the scalar fields of a requests.jsonl record, then derived ones.
CSV_COLUMNS: tuple[str, ...] = (
    "index",
    "status",
    "error",
    "error_detail",
    "http_status",
    "request_id",
    "sent_at",
    "sent_s",
    "scheduled_s",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "duration_ms",
    "prompt_tokens",
    "prompt_tokens_planned",
    "output_tokens",
    "max_tokens",
    "finish_reason",
    "last_token_at",
    "path",
    "image_count",
)


def csv_row(record: Mapping[str, Any]) -> list[Any]:
    """One requests.csv row (values in :data:`CSV_COLUMNS` order; None for a missing field)."""
    row = [record.get(name) for name in CSV_COLUMNS[:-1]]
    images = record.get("images")
    row.append(len(images) if isinstance(images, list) else 0)
    return row
