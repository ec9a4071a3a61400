"""What ``harness replay`` replays (I/O: it reads an incident bundle): the requests that were in
flight (``inflight.jsonl``: exact bodies, images included, send offsets), what the incident
was, and the plan of the server that hung, re-planned for each fresh server."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import BadInput
from harness.load.replay import ReplayItem, items_from_inflight
from harness.rundir import RunDir
from harness.spec import LaunchSpec

#: Plans fresh server ``n`` of a replay.
ServerPlanner = Callable[[int], LaunchSpec]


@dataclass(frozen=True)
class Source:
    """The incident being replayed."""

    path: Path
    kind: str
    likely: str
    signature: str | None
    items: list[ReplayItem]
    spec: LaunchSpec | None

    @property
    def span_s(self) -> float:
        return max((it.offset_s for it in self.items), default=0.0)


def read_source(incident: Path) -> Source:
    """Read an incident bundle for replay; every problem is one line (exit 2)."""
    if not incident.is_dir():
        raise BadInput(f"{incident}: not an incident directory", hint="runs/<run-id>/incidents/<n>")
    inflight = incident / "inflight.jsonl"
    if not inflight.is_file():
        raise BadInput(
            f"{incident}: no inflight.jsonl (the requests in flight when it fired), nothing to "
            "replay",
            hint="incidents of harness serve (with harness load --run) and campaigns have one",
        )
    records = []
    for number, line in enumerate(inflight.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise BadInput(f"{inflight}:{number}: not a JSON line") from None
        if isinstance(rec, dict):
            records.append(rec)
    items = items_from_inflight(records)
    if not items:
        raise BadInput(f"{inflight}: no request with a path and a body to replay")
    doc: dict[str, Any] = {}
    try:
        doc = json.loads((incident / "incident.json").read_text())
    except (OSError, ValueError):
        doc = {}
    spec: LaunchSpec | None = None
    try:
        spec = LaunchSpec.from_json((incident / "launch_spec.json").read_text())
    except (OSError, ValueError):
        spec = None
    sigs = doc.get("signatures") if isinstance(doc.get("signatures"), list) else []
    first = sigs[0].get("name") if sigs and isinstance(sigs[0], dict) else None
    return Source(
        incident.resolve(),
        str(doc.get("kind") or "?"),
        str(doc.get("likely") or ""),
        str(first) if first else None,
        items,
        spec,
    )


def respec(spec: LaunchSpec, *, run_id: str, run_dir: Path) -> LaunchSpec:
    """The incident's plan for a new run: its run id and directory replaced wherever the plan
    names them (the argv, the environment, container labels and volumes)."""
    text = spec.to_json()
    for old, new in ((spec.run_dir, str(run_dir)), (spec.run_id, run_id)):
        text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
    return LaunchSpec.from_json(text)


def incident_planner(spec: LaunchSpec, run: RunDir, stall_after_s: float | None) -> ServerPlanner:
    """Fresh servers under the incident's own plan, each in ``servers/<n>/``."""

    def plan(n: int) -> LaunchSpec:
        from harness.campaign.soak import with_secrets_from_environment

        run_id = f"{n:03d}"
        planned = respec(spec, run_id=run_id, run_dir=run.path / "servers" / run_id)
        if stall_after_s is not None:
            planned = planned.model_copy(
                update={"watch": planned.watch.model_copy(update={"stall_after_s": stall_after_s})}
            )
        return with_secrets_from_environment(planned)

    return plan


def describe_items(items: Sequence[ReplayItem]) -> str:
    """``4 requests over 1.2 s (3 load, 1 canary)``."""
    load = sum(1 for it in items if it.source == "load")
    span = max((it.offset_s for it in items), default=0.0)
    return (
        f"{len(items)} request(s) over {span:.1f} s ({load} from the load, "
        f"{len(items) - load} canary)"
    )
