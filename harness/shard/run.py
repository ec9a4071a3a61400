"""``harness shard`` (I/O): save a pre-sharded checkpoint with the engine, verify it, publish it.

1. The plan of the server that will use the copy decides the engine, its version, the device,
   the engine arguments and the runtime; the job runs where that server would
   (:mod:`harness.shard.vllm_job` under the engine's Python here, or in a container made from
   the plan), writing into a hidden work directory next to the destination.
2. The result is compared with the source checkpoint (:mod:`harness.shard.verify`).
3. Only a complete copy is published: ``harness-shard.json`` with ``complete: true`` is written
   last and the work directory renamed to the destination. An incomplete one is removed (or,
   with ``keep_incomplete``, kept with ``complete: false``, which no plan ever serves) and the
   command fails naming the missing tensors and why they are missing.

LMDeploy has no offline conversion any more (``lmdeploy convert`` was removed from its command
line in 2025: TurboMind converts the Hugging Face checkpoint while loading), so only vLLM
copies are made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import __version__, fsinfo, procgroup
from harness.engineinfo import engine_version
from harness.errors import BadInput, CheckFailed, EngineNotInstalled, EnvironmentProblem
from harness.rundir import RunDir
from harness.shard import store, verify
from harness.spec import LaunchSpec
from harness.userfiles import human_size

#: Flags of the plan's argv that are the server's own, not engine arguments for the job.
_SERVER_FLAGS = ("--model", "--served-model-name", "--host", "--port", "--tensor-parallel-size")
LMDEPLOY_NO_CONVERT = (
    "LMDeploy 0.18 has no offline conversion for TP: `lmdeploy convert` was removed from its "
    "command line (InternLM/lmdeploy#3813); TurboMind converts the checkpoint while loading"
)


@dataclass
class ShardResult:
    path: Path
    meta: store.ShardMeta
    already: bool = False
    seconds: float = 0.0


def job_engine_args(spec: LaunchSpec) -> list[str]:
    """The plan's engine arguments (profile and ``--engine-arg``), without the flags that only
    concern the server (``--model``, ``--port``, ...) and without a sharded load format."""
    tokens = spec.argv[3:] if spec.argv[1:2] == ["-m"] else spec.argv[1:]
    out: list[str] = []
    skip = False
    for i, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in _SERVER_FLAGS or (name == "--load-format" and spec.sharded_copy):
            skip = "=" not in token and i + 1 < len(tokens)
            continue
        out.append(token)
    return out


def _source_dir(spec: LaunchSpec) -> Path:
    path = Path(spec.model)
    if not path.is_dir():
        raise BadInput(
            f"{spec.model} is not a local directory",
            hint=f"harness fetch {spec.model} first, then shard the directory it prints",
        )
    if store.read_meta(path) is not None:
        raise BadInput(f"{spec.model} is itself a pre-sharded copy; shard its source instead")
    return path


def _existing_dest(dest: Path, source: Path, meta_wanted: store.Wanted) -> store.ShardMeta | None:
    """A destination that already holds this very copy (returned), or refusal of one that holds
    anything else."""
    if not dest.exists():
        return None
    if not dest.is_dir():
        raise BadInput(f"--dest {dest} exists and is not a directory")
    try:
        found = store.read_meta(dest)
    except BadInput as exc:
        raise BadInput(f"--dest {dest} holds something else: {exc.message}") from None
    if found is None:
        if any(dest.iterdir()):
            raise BadInput(f"--dest {dest} is not empty and holds no harness shard")
        return None
    if os.path.realpath(found.source.path) != os.path.realpath(source):
        raise BadInput(
            f"--dest {dest} holds a shard of another model ({found.source.path})",
            hint="pick another --dest, or remove that directory",
        )
    why = store.mismatch(store.inspect(dest), meta_wanted)
    if why is None:
        return found
    raise BadInput(
        f"--dest {dest} holds another shard of this model that does not match: {why}",
        hint="remove it, or pick another --dest",
    )


def _check_writable(dest: Path, needed: int) -> None:
    parent = dest.parent
    probe = parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {dest}: {probe} is not a writable directory")
    free = fsinfo.free_bytes(str(parent))
    if free is not None and free < needed:
        raise EnvironmentProblem(
            f"{parent} has {human_size(free)} free; the shard needs about {human_size(needed)}",
            hint="free space there, or pick another --dest",
        )


def _run_local(
    spec: LaunchSpec, argv: list[str], log: Path, timeout_s: float
) -> tuple[int | None, str]:
    with open(log, "ab") as out:
        proc = procgroup.spawn(argv, env={**os.environ, **spec.env}, stdout=out)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            procgroup.stop_tree(proc.pid, grace_s=spec.deadlines.stop_grace_s, popen=proc)
    return code, log.read_text(errors="replace")


def _run_docker(
    spec: LaunchSpec, argv: list[str], log: Path, timeout_s: float, work: Path
) -> tuple[int | None, str]:
    from harness.runtime.docker_tasks import TaskContainer

    mounts = {str(work.parent): (str(work.parent), "rw")}
    with TaskContainer.start(spec, argv, task="shard", volumes=mounts) as box:
        code = box.wait(timeout_s)
        text = box.output()
    log.write_text(text)
    return code, text


def shard(
    spec: LaunchSpec,
    run: RunDir,
    *,
    dest: Path | None = None,
    keep_incomplete: bool = False,
    echo: Callable[[str], None] = print,
) -> ShardResult:
    """Make, verify and publish the pre-sharded copy of ``spec.model`` for ``spec`` (see the
    module docstring). Raises :class:`CheckFailed` for an incomplete result."""
    if spec.engine == "sim":
        raise BadInput("the simulated engine has no weights to shard; use --engine vllm")
    if spec.engine == "lmdeploy":
        raise BadInput(
            LMDEPLOY_NO_CONVERT, hint="serve the original checkpoint with --engine lmdeploy"
        )
    source = _source_dir(spec)
    image = spec.container.image if spec.container else None
    python = spec.argv[0]
    version = engine_version(spec.engine, runtime=spec.runtime, python=python, image=image)
    if version is None:
        where = f"image {image}" if image else python
        raise EngineNotInstalled(
            f"vLLM is not installed in {where}", hint="make install-vllm, or --image with vLLM"
        )
    fingerprint = store.source_fingerprint(str(source))
    engine_args = job_engine_args(spec)
    wanted = store.Wanted(
        spec.engine, version, spec.device, spec.tp, fingerprint, store.weight_args(engine_args)
    )
    target = (
        dest or store.default_dest(str(source), spec.engine, version, spec.device, spec.tp)
    ).absolute()
    found = _existing_dest(target, source, wanted)
    if found is not None:
        store.register_link(str(source), target, found)
        return ShardResult(target, found, already=True)
    source_tensors = verify.source_tensors(source)
    weights = sum(p.stat().st_size for p in source.iterdir() if p.suffix == ".safetensors")
    _check_writable(target, weights)

    work = target.parent / f".{target.name}.partial-{os.getpid()}"
    new_parent = not target.parent.exists()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _make(spec, run, source, target, work, version, wanted, source_tensors,
                     keep_incomplete, echo)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if new_parent:
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # only if nothing was published in it


def _make(
    spec: LaunchSpec,
    run: RunDir,
    source: Path,
    target: Path,
    work: Path,
    version: str,
    wanted: store.Wanted,
    source_tensors: dict[str, verify.TensorInfo],
    keep_incomplete: bool,
    echo: Callable[[str], None],
) -> ShardResult:
    from harness.shard import vllm_job

    started = time.monotonic()
    job = run.path / "vllm_job.py"
    shutil.copyfile(str(vllm_job.__file__), job)
    result_file = work / ".harness-job.json"
    python = "python3" if spec.runtime == "docker" else spec.argv[0]
    argv = [python, str(job), "--source", str(source), "--dest", str(work)]
    argv += ["--tp", str(spec.tp), "--result", str(result_file), "--", *job_engine_args(spec)]
    log = run.path / "shard.log"
    timeout_s = spec.deadlines.startup_s + 600
    echo(
        f"saving vLLM {version}'s sharded state of {source} for TP {spec.tp} "
        f"({spec.runtime}; log: {log})"
    )
    if spec.runtime == "docker":
        code, text = _run_docker(spec, argv, log, timeout_s, work)
    else:
        code, text = _run_local(spec, argv, log, timeout_s)
    if code != 0 or not result_file.is_file():
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        what = "did not finish in time" if code is None else f"exited with code {code}"
        raise CheckFailed(f"vLLM's save_sharded_state {what}: {last[0][:300]}", hint=f"read {log}")
    job_result = json.loads(result_file.read_text())
    result_file.unlink()

    expected = verify.expected_tensors(
        source_tensors, tie_word_embeddings=verify.tied_embeddings(source)
    )
    ranks, files = verify.shard_tensors(work)
    verdict = verify.compare(expected, ranks, spec.tp)
    meta = store.ShardMeta(
        complete=verdict.complete,
        engine="vllm",
        engine_version=version,
        device=spec.device,
        tp=spec.tp,
        source=store.ShardSource(path=str(source), fingerprint=dict(wanted.fingerprint)),
        weight_args=dict(wanted.weight_args),
        files=[store.ShardFile(name=n, size=s, rank=r) for n, s, r in files],
        missing=verdict.missing_names(),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        harness_version=__version__,
    )
    (run.path / "shard.json").write_text(
        json.dumps({"meta": meta.model_dump(), "job": job_result}, indent=2) + "\n"
    )
    if not verdict.complete:
        kept = ""
        if keep_incomplete:
            store.write_meta(work, meta)
            kept_at = target.with_name(target.name + ".incomplete")
            shutil.rmtree(kept_at, ignore_errors=True)
            os.replace(work, kept_at)
            kept = f"; kept, marked incomplete, at {kept_at}"
        raise CheckFailed(_incomplete_message(verdict, spec) + kept, hint=_incomplete_hint(spec))
    store.write_meta(work, meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, target)
    store.register_link(str(source), target, meta)
    return ShardResult(target, meta, seconds=time.monotonic() - started)


def _incomplete_message(verdict: verify.Verdict, spec: LaunchSpec) -> str:
    parts = []
    names = verdict.missing_names()
    if names:
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        parts.append(
            f"{len(names)} of {len(verdict.expected)} tensors the loader expects are missing "
            f"({shown})"
        )
    if verdict.missing_ranks:
        parts.append(f"no files for rank(s) {', '.join(map(str, verdict.missing_ranks))}")
    for name, (have, want) in sorted(verdict.short.items())[:4]:
        parts.append(f"{name} holds {have} elements over all ranks, the source has {want}")
    return (
        f"the sharded copy for TP {spec.tp} is incomplete and was not kept: "
        + "; ".join(parts)
        + f". Cause: {verify.cause(verdict, spec.device)}"
    )


def _incomplete_hint(spec: LaunchSpec) -> str:
    if spec.device == "cpu":
        return (
            "serve the original checkpoint (the CPU backend loads it quickly); pre-sharded "
            "checkpoints are for GPU servers"
        )
    return "serve the original checkpoint; report the missing tensors to vLLM"
