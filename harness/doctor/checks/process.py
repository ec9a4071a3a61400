"""Checks of what the server's processes will meet (pure): the distributed test with nproc=TP,
shared memory and IPC, ptrace (py-spy), core dumps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.doctor.checks.base import NET_FIX, Check, PlanView
from harness.userfiles import MIB, human_size

# ------------------------------------------------------------------------ distributed test

_STEP_TITLES = {
    "gloo": ("gloo-init", "gloo-all_reduce", "gloo-barrier"),
    "nccl": ("nccl-all_reduce",),
    "pynccl": ("pynccl-all_reduce",),
    "pynccl cuda-graph": ("pynccl-cuda-graph",),
}


def _steps(rank: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(s.get("step")): s for s in rank.get("steps") or []}


def _rank_problem(rank: Mapping[str, Any], summary: Mapping[str, Any]) -> str | None:
    """Why one rank did not finish the Gloo steps, in words; None when it did."""
    steps = _steps(rank)
    r = rank.get("rank")
    address = f"{summary.get('addr')}:{summary.get('port')}"
    if not rank.get("started"):
        return f"rank {r} never started, so it never joined the rendezvous at {address}"
    if all(steps.get(name, {}).get("status") == "ok" for name in _STEP_TITLES["gloo"]):
        return None
    failures = [s for s in rank.get("steps") or [] if s.get("status") == "fail"]
    env = rank.get("env") or {}
    where = f" ({', '.join(f'{k}={v}' for k, v in env.items())} on rank {r})" if env else ""
    if failures:
        last = failures[-1]
        name, error = last.get("step"), str(last.get("error") or "")
        if name == "rendezvous":
            return f"rank {r} failed at the rendezvous at {address}: {error}{where}"
        return f"rank {r} failed at {name}: {error}{where}"
    reached = (rank.get("steps") or [{}])[-1].get("step", "start")
    if rank.get("killed_at_deadline"):
        if "rendezvous" not in steps:
            return (
                f"rank {r} never joined the rendezvous at {address} (stopped after "
                f"{summary.get('timeout_s')} s, last step: {reached}){where}"
            )
        return f"rank {r} hung after {reached} and was stopped at the deadline{where}"
    return f"rank {r} exited with code {rank.get('exit_code')} after {reached}{where}"


def _culprits(problems: dict[int, str], summary: Mapping[str, Any]) -> list[int]:
    """The ranks to name first: the ones that never came or failed by themselves, rather than
    the ones that timed out waiting for them."""
    ranks = {int(r["rank"]): r for r in summary.get("ranks") or []}
    own = []
    for r in problems:
        rank = ranks[r]
        errors = " ".join(str(s.get("error") or "") for s in rank.get("steps") or [])
        waited = "Timed out" in errors or "timeout" in errors.lower()
        if not rank.get("started") or "rendezvous" not in _steps(rank) or not waited:
            own.append(r)
    return own or sorted(problems)


def judge_distributed(
    summary: Mapping[str, Any] | None, *, error: str | None = None
) -> list[Check]:
    """Checks from the sanity test's summary (:func:`harness.doctor.sanity.launch`)."""
    if summary is None:
        return [
            Check(
                "distributed: gloo",
                "FAIL",
                f"the distributed test did not run: {error or 'no result'}",
                "read the rank logs in the doctor directory of the run",
            )
        ]
    ranks = summary.get("ranks") or []
    nproc = summary.get("nproc")
    address = f"{summary.get('addr')}:{summary.get('port')}"
    problems = {int(r["rank"]): p for r in ranks if (p := _rank_problem(r, summary))}
    checks: list[Check] = []
    if problems:
        order = _culprits(problems, summary)
        rest = [r for r in sorted(problems) if r not in order]
        detail = "; ".join(problems[r] for r in order + rest)
        checks.append(
            Check(
                "distributed: gloo",
                "FAIL",
                f"nproc {nproc}: {detail}",
                f"{NET_FIX}; then rerun `harness doctor` (rank logs: {_log_dir(ranks)})",
            )
        )
    else:
        seconds = max(
            (float(s.get("seconds", 0)) for r in ranks for s in r.get("steps") or []
             if s.get("step") in _STEP_TITLES["gloo"]),
            default=0.0,
        )  # fmt: skip
        checks.append(
            Check(
                "distributed: gloo",
                "PASS",
                f"all_reduce + barrier over {nproc} ranks via {address} "
                f"(slowest step {seconds:.2f} s)",
            )
        )
    for title, names in list(_STEP_TITLES.items())[1:]:
        checks.append(_gpu_step_check(title, names[0], ranks, gloo_failed=bool(problems)))
    return checks


def _log_dir(ranks: Sequence[Mapping[str, Any]]) -> str:
    logs = [str(r.get("log")) for r in ranks if r.get("log")]
    return logs[0].rsplit("/", 1)[0] if logs else "?"


def _gpu_step_check(
    title: str, step: str, ranks: Sequence[Mapping[str, Any]], *, gloo_failed: bool
) -> Check:
    name = f"distributed: {title}"
    records = [(r.get("rank"), _steps(r).get(step)) for r in ranks]
    if gloo_failed and not any(rec for _r, rec in records):
        return Check(name, "SKIP", "not reached: the Gloo steps failed")
    skipped = [rec for _r, rec in records if rec and rec.get("status") == "skip"]
    if skipped and len(skipped) == len(records):
        return Check(name, "SKIP", str(skipped[0].get("reason")))
    bad = [(r, rec) for r, rec in records if not rec or rec.get("status") == "fail"]
    if bad:
        r, rec = bad[0]
        why = str(rec.get("error")) if rec else "never reached (an earlier step failed or hung)"
        fix = (
            "try --profile nccl-safe (NCCL_P2P_DISABLE=1, no custom all-reduce); rerun with "
            "NCCL_DEBUG=INFO (--profile debug) and read the rank logs"
        )
        return Check(name, "FAIL", f"rank {r}: {why}", fix)
    return Check(name, "PASS", f"{len(records)} ranks")


# ------------------------------------------------------------------------------ shm and IPC

#: vLLM's message queues in shared memory: the scheduler broadcast (VLLM_MQ_MAX_CHUNK_BYTES_MB,
#: 16 MiB x 10 chunks) and one response queue per worker (24 MiB x 10), plus room for NCCL's
#: shared-memory transport. Measured from vllm/v1/executor/multiproc_executor.py (0.32).
SHM_BASE = 160 * MIB
SHM_PER_RANK = 256 * MIB
DOCKER_DEFAULT_SHM = 64 * MIB


def shm_needed(tp: int) -> int:
    return SHM_BASE + SHM_PER_RANK * tp


def judge_shm(plan: PlanView, shm: Mapping[str, Any]) -> Check:
    name = "shm"
    if "error" in shm:
        return Check(name, "FAIL", f"cannot read /dev/shm: {shm['error']}", _shm_fix(plan))
    total, free = int(shm.get("total", 0)), int(shm.get("free", 0))
    where = _ipc_words(plan)
    seen = f"/dev/shm {human_size(total)} ({human_size(free)} free){where}"
    if plan.tp <= 1:
        return Check(name, "PASS", f"{seen}; TP 1 shares nothing between ranks")
    need = shm_needed(plan.tp)
    if free < need:
        default = " (Docker's default)" if total == DOCKER_DEFAULT_SHM else ""
        return Check(
            name,
            "FAIL",
            f"{seen}{default}: TP {plan.tp} needs about {human_size(need)} for vLLM's "
            "shared-memory queues and NCCL; ranks fail or hang",
            _shm_fix(plan),
        )
    return Check(name, "PASS", f"{seen}; TP {plan.tp} needs about {human_size(need)}")


def _ipc_words(plan: PlanView) -> str:
    if plan.runtime != "docker":
        return ""
    return f", container IPC {plan.ipc_mode or 'private'}" + (
        f", shm_size {plan.shm_size}" if plan.shm_size else ""
    )


def _shm_fix(plan: PlanView) -> str:
    if plan.runtime == "docker":
        return (
            "use host IPC (--ipc=host: container.ipc_mode: host, as the default profile does) "
            "or a larger private /dev/shm (--shm-size: container.shm_size: 16g)"
        )
    return "give this host a larger /dev/shm: sudo mount -o remount,size=16G /dev/shm"


# ------------------------------------------------------------------------------------ ptrace


@dataclass(frozen=True)
class PtraceAttempt:
    """A real ``py-spy dump`` of a process where the server runs."""

    ok: bool
    error: str | None = None
    skipped: str | None = None


def judge_ptrace(
    plan: PlanView,
    facts: Mapping[str, Any],
    host: PtraceAttempt,
    inside: PtraceAttempt | None,
    *,
    host_uid: int,
    host_cap_sys_ptrace: bool = True,
) -> Check:
    """Stack dumps need ptrace. The watchdog runs py-spy on the host; for a container, py-spy
    inside it (``harness dump --container``) is the fallback, which the checks count only with
    CAP_SYS_PTRACE: without it, attaching depends on the host kernel's Yama setting."""
    name = "ptrace"
    scope = facts.get("ptrace_scope")
    scope_words = "no Yama LSM" if scope is None else f"kernel.yama.ptrace_scope={scope}"
    if plan.runtime != "docker":
        if host.ok:
            return Check(name, "PASS", f"py-spy attached to a process here ({scope_words})")
        return Check(
            name,
            "FAIL",
            f"py-spy cannot attach here: {host.error or host.skipped} ({scope_words}, uid "
            f"{host_uid}{'' if host_cap_sys_ptrace else ', no CAP_SYS_PTRACE'})",
            _host_ptrace_fix(scope, host),
        )
    caps = facts.get("capabilities") or {}
    cap = bool(caps.get("sys_ptrace"))
    pyspy_inside = facts.get("py_spy")
    inside_ok = bool(inside and inside.ok)
    inside_words = (
        "inside the container: "
        + ("CAP_SYS_PTRACE" if cap else "no CAP_SYS_PTRACE")
        + (f", py-spy at {pyspy_inside}" if pyspy_inside else ", no py-spy in the image")
        + (", attach works" if inside_ok else f", attach failed ({inside.error})" if inside else "")
    )
    if host.ok:
        return Check(
            name, "PASS", f"from the host: py-spy attached ({scope_words}); {inside_words}"
        )
    cap_words = "" if host_cap_sys_ptrace else ", no CAP_SYS_PTRACE"
    host_words = f"from the host (uid {host_uid}{cap_words}): {host.error or host.skipped}"
    if cap and pyspy_inside and inside_ok:
        return Check(
            name,
            "WARN",
            f"{host_words}; {inside_words}: only `harness dump --container` gets stacks, the "
            "watchdog of `harness serve` dumps from the host",
            _host_ptrace_fix(scope, host),
        )
    fixes = []
    if not cap:
        fixes.append(
            "add CAP_SYS_PTRACE to the container: --profile debug, or container.cap_add: "
            "[SYS_PTRACE] in your profile (docker run --cap-add SYS_PTRACE)"
        )
    if not pyspy_inside:
        fixes.append("use an image with py-spy (make images builds them)")
    fixes.append(_host_ptrace_fix(scope, host))
    unsure = (
        " (attaching inside works here only because of this kernel's settings)"
        if (inside_ok and not cap)
        else ""
    )
    return Check(
        name,
        "FAIL",
        f"no way to take stacks of the server: {host_words}; {inside_words}{unsure}",
        "; ".join(fixes),
    )


def _host_ptrace_fix(scope: str | None, host: PtraceAttempt) -> str:
    if host.skipped and "py-spy" in host.skipped:
        return "install py-spy where harness runs (pip install py-spy) or set HARNESS_PY_SPY"
    if scope not in (None, "0"):
        return (
            "run harness as root, or allow ptrace: sudo sysctl -w kernel.yama.ptrace_scope=0 "
            "(permanent: /etc/sysctl.d/10-ptrace.conf)"
        )
    return (
        "run harness as root (sudo: it holds CAP_SYS_PTRACE), or as the user the server's "
        "processes run as"
    )


# ------------------------------------------------------------------------------- core dumps


def judge_cores(plan: PlanView, core: Mapping[str, Any]) -> Check:
    name = "core dumps"
    soft, pattern = core.get("soft"), core.get("pattern")
    words = f"ulimit -c {'unlimited' if soft == -1 else soft}, kernel.core_pattern {pattern!r}"
    if soft == 0:
        fix = "--profile debug (it sets container.ulimits.core: -1, unlimited)"
        if plan.runtime != "docker":
            fix += ", or `ulimit -c unlimited` in the shell that starts harness"
        return Check(name, "WARN", f"{words}: a crashing rank leaves no core file", fix)
    if core.get("apport"):
        return Check(
            name,
            "WARN",
            f"{words}: apport takes the cores and drops those of unpackaged programs such as "
            "python in a virtualenv",
            "sudo sysctl -w kernel.core_pattern=core.%e.%p (or use systemd-coredump), or "
            "`harness dump --core` to write cores with gcore",
        )
    if core.get("systemd_coredump"):
        return Check(name, "PASS", f"{words}: cores go to systemd-coredump (coredumpctl list)")
    return Check(name, "PASS", words)
