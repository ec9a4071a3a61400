"""Running ``harness doctor`` (I/O): the probes where the server will run, then the checks.

For ``--runtime local`` the probes are subprocesses here, with the server's environment. For
``--runtime docker`` they run in containers made from the same plan
(:class:`harness.runtime.docker_tasks.TaskContainer`: same image, IPC, shm, capabilities, ulimits,
network, GPUs, mounts), so a 1 MB ``/dev/shm`` or a missing capability shows up exactly as the
server would meet it. The scripts (:mod:`harness.doctor.probe`, :mod:`harness.doctor.sanity`)
are copied into ``out_dir``, which is mounted at the same path in the container.

``harness serve --preflight`` runs the same checks without the distributed test
(:func:`preflight`) and refuses to start when one FAILs.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness import fsinfo, procgroup
from harness.doctor import checks as C
from harness.doctor.checks import Check, PlanView, PtraceAttempt
from harness.errors import CheckFailed
from harness.records import write_json
from harness.spec import LaunchSpec
from harness.watchdog.subproc import run_with_deadline

#: Seconds the facts probe may take (nvidia-smi has 20 s per call; torch.cuda a few).
PROBE_TIMEOUT_S = 90.0
#: Seconds one ``py-spy dump`` attempt may take.
PTRACE_TIMEOUT_S = 20.0
#: Default per-step timeout of the distributed test.
DIST_TIMEOUT_S = 30.0
DOCTOR_FILE = "doctor.json"


@dataclass
class DoctorRun:
    """What one doctor run found."""

    checks: list[Check]
    out_dir: Path
    facts: dict[str, Any] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None

    @property
    def failed(self) -> list[Check]:
        return C.failed(self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"checks": [c.to_dict() for c in self.checks]}


def plan_view(spec: LaunchSpec) -> PlanView:
    c = spec.container
    return PlanView(
        engine=spec.engine,
        tp=spec.tp,
        runtime=spec.runtime,
        device=spec.device,
        profiles=tuple(spec.profiles),
        ipc_mode=c.ipc_mode if c else None,
        shm_size=c.shm_size if c else None,
        cap_add=tuple(c.cap_add) if c else (),
        gpus=c.gpus if c else None,
        image=c.image if c else None,
    )


def _engine_python(spec: LaunchSpec) -> str:
    """The interpreter the server runs under here (for the probes' versions and torch)."""
    if spec.engine == "vllm" and spec.argv and os.path.basename(spec.argv[0]).startswith("python"):
        return spec.argv[0]
    return os.environ.get("HARNESS_ENGINE_PYTHON") or sys.executable


def install_scripts(out_dir: Path) -> dict[str, Path]:
    """Copy the probe scripts into ``out_dir`` (they run from there, also in a container)."""
    from harness.doctor import probe, sanity

    out_dir.mkdir(parents=True, exist_ok=True)
    placed = {}
    for name, module in (("probe", probe), ("sanity", sanity)):
        target = out_dir / f"{name}.py"
        shutil.copyfile(str(module.__file__), target)
        placed[name] = target
    return placed


# ---------------------------------------------------------------------------------- ptrace


def has_cap_sys_ptrace() -> bool:
    from harness.watchdog.capture import has_cap_sys_ptrace as has

    return has()


def find_py_spy() -> str | None:
    from harness.watchdog.capture import find_py_spy as find

    return find()


def pyspy_attempt(pid: int, py_spy: str | None = None) -> PtraceAttempt:
    """A real ``py-spy dump`` of ``pid`` from here (what the watchdog does on a hang)."""
    py_spy = py_spy or find_py_spy()
    if py_spy is None:
        return PtraceAttempt(False, skipped="py-spy not found here (pip install py-spy)")
    done = run_with_deadline([py_spy, "dump", "--pid", str(pid)], PTRACE_TIMEOUT_S)
    if done.returncode == 0 and "Thread " in done.output:
        return PtraceAttempt(True)
    return PtraceAttempt(False, error=_last_line(done.output) or f"exit {done.returncode}")


def _last_line(text: str) -> str:
    """The line that says what went wrong (py-spy prints a cause chain, then a backtrace)."""
    lines = [line.strip() for line in text.split("Stack backtrace:")[0].splitlines()]
    lines = [line for line in lines if line]
    causes = [line.split(": ", 1)[-1] for line in lines if line[:1].isdigit()]
    errors = [line for line in lines if line.startswith("Error")]
    picked = causes[-1:] or errors[-1:] or lines[-1:]
    return " ".join(picked)[:300]


def local_ptrace_attempt(python: str) -> PtraceAttempt:
    """py-spy against a Python process that is not its parent's child (like a server worker)."""
    target = procgroup.spawn(
        [python, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert target.stdout is not None
        ready, _, _ = select.select([target.stdout], [], [], 30)
        if not ready or not target.stdout.readline().startswith(b"ready"):
            return PtraceAttempt(False, skipped=f"the test process ({python}) did not start")
        return pyspy_attempt(target.pid)
    finally:
        procgroup.stop_tree(target.pid, grace_s=1, popen=target)


# ----------------------------------------------------------------------------------- probes


def _server_env(spec: LaunchSpec) -> dict[str, str]:
    """The environment the server gets: this shell's plus the plan's (local), or the plan's
    plus what Docker passes through (docker)."""
    if spec.runtime == "docker":
        from harness.render import PASSTHROUGH_ENV

        passed = {n: os.environ[n] for n in PASSTHROUGH_ENV if n in os.environ}
        return {**passed, **spec.env}
    return {**os.environ, **spec.env}


def probe_local(spec: LaunchSpec, scripts: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    out = out_dir / "facts.json"
    argv = [_engine_python(spec), str(scripts["probe"]), "--out", str(out)]
    if spec.device == "cuda":
        argv.append("--gpu")
    done = run_with_deadline(argv, PROBE_TIMEOUT_S, env=spec.env)
    if done.returncode != 0 or not out.is_file():
        return {"error": f"the probe failed ({_last_line(done.output) or done.returncode})"}
    facts: dict[str, Any] = json.loads(out.read_text())
    facts["ptrace_host"] = asdict(local_ptrace_attempt(_engine_python(spec)))
    return facts


def probe_docker(spec: LaunchSpec, scripts: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """The probe in a container made from the plan, held alive for the ptrace attempts."""
    from harness.runtime.docker_tasks import TaskContainer

    out, release = out_dir / "facts.json", out_dir / "release"
    argv = ["python3", str(scripts["probe"]), "--out", str(out), "--hold", "120"]
    argv += ["--release", str(release)] + (["--gpu"] if spec.device == "cuda" else [])
    mounts = {str(out_dir): (str(out_dir), "rw")}
    with TaskContainer.start(
        spec, argv, task="doctor-probe", volumes=mounts, drop_targets=_absent_run_dir(spec)
    ) as box:
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while not out.is_file() and time.monotonic() < deadline:
            if box.wait(0.2) is not None and not out.is_file():
                return {"error": f"the probe exited in the container: {box.output()[-300:]}"}
        if not out.is_file():
            return {"error": f"the probe gave no answer in {PROBE_TIMEOUT_S:.0f} s"}
        facts: dict[str, Any] = json.loads(out.read_text())
        host_pid = box.host_pid()
        facts["ptrace_host"] = asdict(
            pyspy_attempt(host_pid) if host_pid else PtraceAttempt(False, skipped="no host pid")
        )
        if facts.get("py_spy"):
            code, text = box.exec(
                ["py-spy", "dump", "--pid", str(facts.get("pid"))], PTRACE_TIMEOUT_S
            )
            ok = code == 0 and "Thread " in text
            inside = PtraceAttempt(ok, error=None if ok else _last_line(text) or f"exit {code}")
        else:
            inside = PtraceAttempt(False, skipped="no py-spy in the image")
        facts["ptrace_inside"] = asdict(inside)
        release.touch()
        box.wait(10)
        return facts


def _absent_run_dir(spec: LaunchSpec) -> tuple[str, ...]:
    """A run directory that does not exist yet (``serve --preflight``) is not mounted: Docker
    would create it, and a refused start must leave nothing behind."""
    return () if os.path.isdir(spec.run_dir) else (spec.run_dir,)


def run_distributed(
    spec: LaunchSpec,
    scripts: dict[str, Path],
    out_dir: Path,
    *,
    timeout_s: float = DIST_TIMEOUT_S,
    rank_env: Mapping[int, Mapping[str, str]] | None = None,
    absent_ranks: tuple[int, ...] = (),
) -> tuple[dict[str, Any] | None, str | None]:
    """The sanity test with nproc = TP where the server runs: (summary, error)."""
    from harness.doctor.sanity import KILL_GRACE_S, STARTUP_ALLOWANCE_S

    dist_dir = out_dir / "distributed"
    dist_dir.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    for rank, env in (rank_env or {}).items():
        extra += [f"--rank-env={rank}:{k}={v}" for k, v in env.items()]
    extra += [f"--absent-rank={r}" for r in absent_ranks]
    python = "python3" if spec.runtime == "docker" else _engine_python(spec)
    argv = [python, str(scripts["sanity"]), "launch", "--nproc", str(spec.tp)]
    argv += ["--out-dir", str(dist_dir), "--timeout", str(timeout_s), "--python", python, *extra]
    budget = timeout_s + STARTUP_ALLOWANCE_S + KILL_GRACE_S + 15
    if spec.runtime == "docker":
        from harness.runtime.docker_tasks import TaskContainer

        mounts = {str(out_dir): (str(out_dir), "rw")}
        drop = _absent_run_dir(spec)
        with TaskContainer.start(
            spec, argv, task="doctor-dist", volumes=mounts, drop_targets=drop
        ) as box:
            code = box.wait(budget)
            text = box.output()
        if code is None:
            return None, f"the test did not end within {budget:.0f} s (container stopped)"
    else:
        done = run_with_deadline(argv, budget, env=spec.env)
        text = done.output
        if done.timed_out:
            return None, f"the test did not end within {budget:.0f} s (stopped)"
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                summary: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            (dist_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            return summary, None
    return None, f"no result from the test launcher: {_last_line(text)}"


# ------------------------------------------------------------------------------ host facts


def model_view(spec: LaunchSpec) -> C.ModelView:
    path = spec.sharded_copy or spec.model
    if not os.path.isdir(path):
        return C.ModelView(spec.model, None)
    network, words, mount_point = fsinfo.is_network_path(path)
    weights = sum(
        p.stat().st_size
        for p in Path(path).iterdir()
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".pt", ".pth"}
    )
    return C.ModelView(
        model=spec.model,
        local_path=path,
        network_fs=network,
        fstype=words,
        mount_point=mount_point,
        weights_bytes=weights,
        mem_available=int(psutil.virtual_memory().available),
        disk_free=fsinfo.free_bytes(path),
        hub_note=next((w for w in spec.warnings if w.startswith("serving the local copy")), None),
    )


def sharded_copy_check(spec: LaunchSpec) -> Check:
    name = "sharded copy"
    notes = [w for w in spec.warnings if "pre-sharded copy" in w]
    if spec.sharded_copy:
        return Check(name, "PASS", next(iter(notes), f"serving {spec.sharded_copy}"))
    if notes:
        return Check(
            name,
            "WARN",
            "; ".join(notes),
            f"harness shard {spec.model} --tp {spec.tp} (for this engine and version)",
        )
    if spec.engine != "vllm":
        return Check(name, "SKIP", f"{spec.engine} has no pre-sharded checkpoints in harness")
    return Check(name, "SKIP", f"none for this model (harness shard MODEL --tp {spec.tp})")


def _effective_core(spec: LaunchSpec, core: dict[str, Any]) -> dict[str, Any]:
    """The local runtime raises the core limit to the plan's (within the hard limit)."""
    wanted = spec.rlimits.get("core")
    if spec.runtime != "local" or wanted is None:
        return core
    hard = core.get("hard", -1)
    if hard == -1 or (wanted != -1 and wanted <= hard) or os.geteuid() == 0:
        return {**core, "soft": wanted}
    return core


# ------------------------------------------------------------------------------------- run


def run_doctor(
    spec: LaunchSpec,
    out_dir: Path,
    *,
    distributed: bool = True,
    dist_timeout_s: float = DIST_TIMEOUT_S,
    rank_env: Mapping[int, Mapping[str, str]] | None = None,
    absent_ranks: tuple[int, ...] = (),
    on_check: Callable[[Check], None] | None = None,
) -> DoctorRun:
    """Every check for ``spec``; ``on_check`` sees each one as soon as it is judged. A
    multi-node plan is checked across its nodes (:mod:`harness.doctor.nodes`)."""
    if spec.nodes:
        from harness.doctor.nodes import run_nodes_doctor

        checks, across = run_nodes_doctor(
            spec, out_dir, distributed=distributed, dist_timeout_s=dist_timeout_s, on_check=on_check
        )
        return DoctorRun(checks, out_dir, {}, across)
    plan = plan_view(spec)
    scripts = install_scripts(out_dir)
    made: list[Check] = []

    def add(*new: Check) -> None:
        for check in new:
            made.append(check)
            if on_check is not None:
                on_check(check)

    summary: dict[str, Any] | None = None
    if distributed:
        summary, error = run_distributed(
            spec,
            scripts,
            out_dir,
            timeout_s=dist_timeout_s,
            rank_env=rank_env,
            absent_ranks=absent_ranks,
        )
        add(*C.judge_distributed(summary, error=error))
    probe = probe_docker if spec.runtime == "docker" else probe_local
    facts = probe(spec, scripts, out_dir)
    if "error" in facts:
        add(Check("probe", "FAIL", str(facts["error"]), "read the doctor directory of the run"))
        return DoctorRun(made, out_dir, facts, summary)
    gpu = facts.get("gpu") or {}
    if gpu.get("topo"):
        (out_dir / "nvidia-smi-topo.txt").write_text(str(gpu["topo"]))
    visible = ((facts.get("network") or {}).get("env") or {}).get("CUDA_VISIBLE_DEVICES")
    add(*C.judge_gpus(plan, gpu, visible))
    add(C.judge_shm(plan, facts.get("shm") or {}))
    inside = facts.get("ptrace_inside")
    add(
        C.judge_ptrace(
            plan,
            facts,
            PtraceAttempt(**facts["ptrace_host"]),
            PtraceAttempt(**inside) if inside else None,
            host_uid=os.geteuid(),
            host_cap_sys_ptrace=has_cap_sys_ptrace(),
        )
    )
    add(C.judge_cores(plan, _effective_core(spec, facts.get("core") or {})))
    add(C.judge_network(plan, facts.get("network") or {}))
    kv = _float(spec.env.get("VLLM_CPU_KVCACHE_SPACE"), 4.0)
    add(*C.judge_model(plan, model_view(spec), kv_cache_gib=kv))
    add(sharded_copy_check(spec))
    add(C.judge_debug_env(plan, _server_env(spec)))
    docker_version = None
    if spec.runtime == "docker":
        from harness.runtime.docker import docker_version as ask

        docker_version = ask()
    add(C.judge_engine(plan, facts.get("versions") or {}, docker_version))
    return DoctorRun(made, out_dir, facts, summary)


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value else default
    except ValueError:
        return default


def save(run: DoctorRun, path: Path) -> Path:
    return write_json(path, run.to_dict())


def preflight(spec: LaunchSpec, echo: Callable[[Check], None]) -> None:
    """The fast checks before a start (no distributed test), printed through ``echo``; raises
    :class:`CheckFailed` when one FAILs, so nothing starts."""
    with tempfile.TemporaryDirectory(prefix="harness-preflight-") as tmp:
        result = run_doctor(spec, Path(tmp), distributed=False, on_check=echo)
    if result.failed:
        names = ", ".join(c.name for c in result.failed)
        raise CheckFailed(
            f"preflight: {len(result.failed)} check(s) failed ({names}); nothing was started",
            hint="fix what the FAIL lines say (harness doctor shows the same), or start without "
            "--preflight",
        )
