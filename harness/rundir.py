"""Run directories: ``<runs-dir>/<run-id>/`` and the files the contract names in it.

The runs root is ``--runs-dir``, else ``$HARNESS_RUNS_DIR``, else ``./runs``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import RunNotFound
from harness.redact import Redactor, redact_launch_spec

if TYPE_CHECKING:
    from harness.spec import LaunchSpec

RUNS_DIR_ENV = "HARNESS_RUNS_DIR"


def runs_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the runs root (not created)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(RUNS_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / "runs").resolve()


def new_run_id(kind: str, now: float | None = None) -> str:
    """A sortable, unique run id such as ``20261124-101502-vllm-tp2-3fa9``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    return f"{stamp}-{kind}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunDir:
    """One run's directory and the well-known files inside it."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def launch_spec(self) -> Path:
        return self.path / "launch_spec.json"

    @property
    def server_log(self) -> Path:
        return self.path / "server.log"

    @property
    def requests(self) -> Path:
        return self.path / "requests.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def incidents(self) -> Path:
        return self.path / "incidents"

    @property
    def state(self) -> Path:
        """Live state of a server run: pids, container id, status (rewritten atomically)."""
        return self.path / "state.json"

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_launch_spec(self, spec: LaunchSpec) -> Path:
        """Write ``launch_spec.json``: the one place a run records its plan (atomically).

        Secrets are masked (:func:`harness.redact.redact_launch_spec`): secret-named variables,
        the arguments of flags such as ``--api-key``, and those values wherever else they
        appear. A process that re-reads the file gets the masks, never the secrets.
        """
        tmp = self.launch_spec.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(redact_launch_spec(spec.to_dict()), indent=2))
        os.replace(tmp, self.launch_spec)
        return self.launch_spec

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, **updates: Any) -> dict[str, Any]:
        """Merge ``updates`` into state.json, atomically (a reader never sees half a file)."""
        state = self.read_state()
        # A recorded command line may carry an engine's secret flag (LMDeploy's --api-keys).
        state.update(Redactor().json(updates))
        tmp = self.state.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state)
        return state

    def next_incident_dir(self) -> Path:
        """Create and return ``incidents/<n>/`` with the next free number (1, 2, ...)."""
        self.incidents.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            candidate = self.incidents / str(n)
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                n += 1


def open_run(root: Path, run_id: str) -> RunDir:
    """The run ``run_id`` under ``root`` (a path to a run directory also works)."""
    direct = Path(run_id)
    if direct.is_dir() and (direct / "launch_spec.json").exists():
        return RunDir(direct.resolve())
    candidate = root / run_id
    if not candidate.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f"known runs: {', '.join(known[-5:])}" if known else f"no runs under {root}"
        raise RunNotFound(f"no run {run_id!r} under {root}", hint=hint)
    return RunDir(candidate)


def list_runs(root: Path) -> list[RunDir]:
    """Every run directory under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir()]
