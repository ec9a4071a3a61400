"""Requests to replay (pure): what was in flight when an incident fired, with its send times.

An incident's ``inflight.jsonl`` holds the requests in flight at the capture, exact bodies
included (what ``harness load`` publishes in ``inflight.json``, and the watchdog's canary). A
:class:`ReplayItem` is one of them ready to send again: its path, its body, and when it was sent
relative to the first one. :class:`~harness.load.runner.LoadRunner` sends a replay instead of a
workload when :attr:`~harness.load.config.LoadConfig.replay` is set.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from harness.load.factory import PlannedRequest


@dataclass(frozen=True)
class ReplayItem:
    """One request to send again: ``offset_s`` after the first, to ``path``, with ``body``."""

    offset_s: float
    path: str
    body: Mapping[str, Any]
    source: str = "load"  # load | canary
    original_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset_s": round(self.offset_s, 6),
            "path": self.path,
            "source": self.source,
            "original_index": self.original_index,
            "body": self.body,
        }


def items_from_inflight(
    records: Iterable[Mapping[str, Any]], *, include_canary: bool = True
) -> list[ReplayItem]:
    """The replayable requests of ``inflight.jsonl`` records, in their send order.

    A load request needs ``path`` and ``body``; the canary has ``url`` and ``payload``. Send
    times (``sent_at``, unix seconds) become offsets from the earliest; records without one
    (the canary) go first. A request listed twice (in flight, then stalled) is sent once.
    """
    found: list[tuple[float | None, ReplayItem]] = []
    seen: set[str] = set()
    for rec in records:
        source = str(rec.get("source") or "load")
        body: Any
        path: Any
        if source == "canary":
            if not include_canary:
                continue
            body, path = rec.get("payload"), urlparse(str(rec.get("url") or "")).path
        else:
            body, path = rec.get("body"), rec.get("path")
        if not isinstance(body, Mapping) or not isinstance(path, str) or not path.startswith("/"):
            continue
        key = json.dumps([path, body], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        sent = rec.get("sent_at")
        index = rec.get("index")
        found.append(
            (
                float(sent) if isinstance(sent, int | float) else None,
                ReplayItem(0.0, path, body, source, index if isinstance(index, int) else None),
            )
        )
    times = [t for t, _ in found if t is not None]
    start = min(times) if times else 0.0
    items = [
        ReplayItem(0.0 if t is None else t - start, it.path, it.body, it.source, it.original_index)
        for t, it in found
    ]
    return sorted(items, key=lambda it: it.offset_s)


def replay_times(items: Sequence[ReplayItem]) -> Iterable[float]:
    """The send times of a replay, seconds after its start."""
    return (it.offset_s for it in items)


def planned(item: ReplayItem, index: int, model: str | None) -> PlannedRequest:
    """``item`` as request ``index`` of this run, addressed to ``model`` (the served model's
    name here, which may differ from the one the incident's server had)."""
    body = copy.deepcopy(dict(item.body))
    if model is not None and "model" in body:
        body["model"] = model
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return PlannedRequest(
        index=index,
        path=item.path,
        body=body,
        prompt_tokens=0,  # unknown: the server's usage report says
        max_tokens=int(max_tokens) if isinstance(max_tokens, int) else 0,
    )
