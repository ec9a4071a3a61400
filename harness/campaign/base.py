"""What every campaign shares: its directory and record, live progress, and the plan factory.

A campaign is a run directory ``runs/<id>/`` with ``campaign.json`` (what was asked: kind,
options, command line; written once at the start and updated with the status), the campaign's
own records (``starts.jsonl``, ``cells.jsonl``, ...), ``summary.json`` and the reports. The
servers it starts live in run directories below it (``starts/<n>/``, ``cells/<cell>/r<k>/``)
or, for a soak, in the campaign directory itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import BadInput
from harness.records import read_json, write_json
from harness.redact import Redactor
from harness.rundir import RunDir
from harness.spec import LaunchSpec

if TYPE_CHECKING:
    from harness.load.runner import LoadRunner

CampaignKind = Literal["repro-startup", "soak", "compare", "replay"]
CAMPAIGN_FILE = "campaign.json"


@dataclass(frozen=True)
class Slot:
    """Where and what one server of a campaign is: its run id and runs root, its number, and
    for a compare cell the engine, TP and profiles that differ from the command's."""

    run_id: str
    runs_root: Path
    index: int = 0
    engine: str | None = None
    tp: int | None = None
    profiles: tuple[str, ...] | None = None
    #: Added to the command's port: SLURM array tasks may share a node.
    port_offset: int = 0


#: Plans one server of a campaign (the CLI closes it over the command's plan options).
Planner = Callable[[Slot], LaunchSpec]


def campaign_file(run: RunDir) -> Path:
    return run.path / CAMPAIGN_FILE


def start_campaign(run: RunDir, kind: CampaignKind, options: dict[str, Any]) -> dict[str, Any]:
    """Create the campaign's directory and ``campaign.json``; returns the record."""
    run.create()
    # No secret reaches a file under runs/: a key given as `--engine-arg '--api-key ...'`
    # is masked in the recorded command and options (the servers got it through their
    # environment).
    redactor = Redactor()
    record = {
        "kind": kind,
        "id": run.run_id,
        "created_at": time.time(),
        "command": redactor.argv(["harness", *sys.argv[1:]]),
        "harness_pid": os.getpid(),
        "options": redactor.json(options),
        "status": "running",
    }
    write_json(campaign_file(run), record)
    return record


def read_campaign(run: RunDir) -> dict[str, Any]:
    """The campaign record of ``run`` (``{}`` when it is not a campaign)."""
    return read_json(campaign_file(run))


def require_campaign(run: RunDir, kind: CampaignKind) -> dict[str, Any]:
    """The record of a campaign of ``kind``, or :class:`BadInput` naming what ``run`` is."""
    record = read_campaign(run)
    if record.get("kind") != kind:
        what = f"a {record['kind']} campaign" if record.get("kind") else "not a campaign"
        raise BadInput(f"run {run.run_id} is {what}, not a {kind}")
    return record


def update_campaign(run: RunDir, **changes: Any) -> None:
    """Merge ``changes`` into ``campaign.json`` (atomically)."""
    record = read_campaign(run)
    record.update(changes)
    write_json(campaign_file(run), record)


@dataclass
class Progress:
    """The live state of a campaign, written by the campaign and read by a display thread
    (plain attribute reads and writes only)."""

    kind: str
    total_steps: int | None = None  # starts, cell runs; None for a soak (bounded by time)
    step: int = 0
    label: str = ""
    phase: str = "starting"
    incidents: int = 0
    hangs: int = 0
    started_at: float = field(default_factory=time.monotonic)
    deadline_s: float | None = None  # a soak's duration
    elapsed_before_s: float = 0.0  # a resumed soak's time before this process
    runner: LoadRunner | None = None
    requests_target: int | None = None
    notes: list[str] = field(default_factory=list)

    def elapsed_s(self) -> float:
        return self.elapsed_before_s + time.monotonic() - self.started_at

    def remaining_s(self) -> float | None:
        """Time left: what is left of a soak, or the pace so far times the steps to go."""
        if self.deadline_s is not None:
            return max(0.0, self.deadline_s - self.elapsed_s())
        if self.total_steps and self.step > 1:
            per_step = (time.monotonic() - self.started_at) / (self.step - 1)
            return per_step * (self.total_steps - self.step + 1)
        return None

    def on_phase(self, name: str, elapsed_s: float) -> None:
        """A :class:`~harness.campaign.server.StartupObserver`: show the startup phase."""
        self.phase = f"starting: {name}"

    def on_tick(self, elapsed_s: float, phase: str | None) -> None:
        self.phase = f"starting: {phase or 'launching'} ({elapsed_s:.0f} s)"

    def on_end(self) -> None:
        pass

    def requests_done(self) -> int | None:
        status = self.runner.status() if self.runner is not None else None
        return status.finished if status is not None else None
