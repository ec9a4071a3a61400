"""Judging what the probes found (pure): one :class:`Check` per question, PASS / WARN / FAIL /
SKIP, with the fix when it is not PASS.

Every function here takes facts (the JSON of :mod:`harness.doctor.probe` and
:mod:`harness.doctor.sanity`, the plan, what harness measured on the host) and returns checks;
nothing here reads a file or starts a process, so every rule is unit-tested with the facts
of the situation it describes. :mod:`.process`: what the server's processes meet (distributed
test, shm/IPC, ptrace, cores); :mod:`.host`: the host and what it serves (network, GPUs, debug
variables, versions, model).
"""

from __future__ import annotations

from harness.doctor.checks.base import NET_FIX, Check, PlanView, Status, failed
from harness.doctor.checks.host import (
    ModelView,
    judge_debug_env,
    judge_engine,
    judge_gpus,
    judge_model,
    judge_network,
)
from harness.doctor.checks.process import (
    PtraceAttempt,
    judge_cores,
    judge_distributed,
    judge_ptrace,
    judge_shm,
    shm_needed,
)

__all__ = [
    "NET_FIX",
    "Check",
    "ModelView",
    "PlanView",
    "PtraceAttempt",
    "Status",
    "failed",
    "judge_cores",
    "judge_debug_env",
    "judge_distributed",
    "judge_engine",
    "judge_gpus",
    "judge_model",
    "judge_network",
    "judge_ptrace",
    "judge_shm",
    "shm_needed",
]
