"""Which copy of the model a plan serves (I/O): a hub id's local copy, and a pre-sharded copy.

- A hub id is served from its completed local copy (``harness fetch``, or ``--fetch`` now);
  without one, a command that starts a server refuses (the engine would download during its
  startup and the startup deadline would measure the network), and ``harness plan`` /
  ``harness doctor`` say so.
- A local model directory with a pre-sharded copy matching the plan (``harness shard``: same
  engine and version, TP, device, source and weight-shaping arguments) is served from that
  copy with ``--load-format sharded_state``; every copy that does not match is explained in the
  plan's warnings. A sharded copy given as ``--model`` must match, or the plan is refused.

:func:`harness.cli.planopts.build_spec` calls these, so ``plan``, ``serve``, ``doctor`` and
every campaign get the same choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from harness import engineinfo, hostfacts
from harness.errors import PlanError
from harness.plan import HostFacts
from harness.shard import store
from harness.spec import LaunchSpec


@dataclass(frozen=True)
class SourceChoice:
    """The model to plan with, after looking for a hub id's local copy."""

    model: str
    is_local: bool
    served_name: str | None = None
    notes: tuple[str, ...] = ()


def resolve_source(model: str, engine: str, *, fetch: bool, for_start: bool) -> SourceChoice:
    """A local directory as it is; a hub id replaced by its completed local copy (fetched now
    with ``fetch``). Raises :class:`PlanError` for a hub id with no copy when ``for_start``."""
    path, is_local = hostfacts.classify_model(model)
    if is_local or engine == "sim":
        return SourceChoice(path, is_local)
    from harness import fetch as fetching

    fetching.check_repo_id(model)
    copy = fetching.local_copy(model)
    if copy is None and fetch:
        copy = fetching.fetch(model, echo=_stderr).path
    if copy is not None:
        note = f"serving the local copy of {model} at {copy} (harness fetch)"
        return SourceChoice(str(copy), True, served_name=model, notes=(note,))
    if for_start:
        raise PlanError(
            f"{model} has no completed local copy: the engine would download it during its "
            "startup, and the startup deadline would measure the network",
            hint=f"harness fetch {model} first, or add --fetch to download it now",
        )
    note = (
        f"{model} has no completed local copy: serve refuses it (harness fetch {model}, or --fetch)"
    )
    return SourceChoice(model, False, notes=(note,))


def _stderr(line: str) -> None:
    import click

    click.echo(line, err=True)


@dataclass(frozen=True)
class ShardChoice:
    """The pre-sharded copy to serve (if any), and what to tell the user about the others."""

    path: str | None = None
    served_name: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _wanted(spec: LaunchSpec, host: HostFacts, fingerprint: dict[str, str]) -> store.Wanted:
    image = spec.container.image if spec.container else None
    version = engineinfo.engine_version(
        spec.engine, runtime=spec.runtime, python=host.python, image=image
    )
    return store.Wanted(
        engine=spec.engine,
        engine_version=version,
        device=spec.device,
        tp=spec.tp,
        fingerprint=fingerprint,
        weight_args=store.weight_args(spec.argv),
    )


def _load_format_set(spec: LaunchSpec) -> bool:
    return any(a == "--load-format" or a.startswith("--load-format=") for a in spec.argv)


def choose_sharded(spec: LaunchSpec, host: HostFacts) -> ShardChoice:
    """The sharded copy for a planned vLLM launch of a local directory (see the module)."""
    if spec.engine == "sim" or not os.path.isdir(spec.model):
        return ShardChoice()
    direct = store.inspect(Path(spec.model)) if store.read_meta(spec.model) else None
    if direct is not None:
        return _direct(spec, host, direct)
    candidates = [store.inspect(path) for path in store.copies_of(spec.model)]
    if not candidates:
        return ShardChoice()
    if spec.engine != "vllm":
        return ShardChoice(notes=tuple(
            f"the pre-sharded copy at {c.path} is not used: {spec.engine} does not load vLLM's "
            "sharded state"
            for c in candidates
        ))  # fmt: skip
    if _load_format_set(spec):
        return ShardChoice(notes=tuple(
            f"the pre-sharded copy at {c.path} is not used: the plan sets --load-format itself"
            for c in candidates
        ))  # fmt: skip
    wanted = _wanted(spec, host, store.source_fingerprint(spec.model))
    chosen, notes = store.choose(candidates, wanted)
    if chosen is None or chosen.meta is None:
        return ShardChoice(notes=tuple(notes))
    used = (
        f"serving the pre-sharded copy at {chosen.path} ({store.describe(chosen.meta)}) with "
        f"--load-format {store.VLLM_LOAD_FORMAT}"
    )
    return ShardChoice(str(chosen.path), notes=(used, *notes))


def _direct(spec: LaunchSpec, host: HostFacts, copy: store.Candidate) -> ShardChoice:
    """``--model`` names a sharded copy itself: it must match the plan."""
    meta = copy.meta
    if meta is None:
        raise PlanError(f"{spec.model}: {copy.problem}")
    if spec.engine != "vllm":
        raise PlanError(f"{spec.model} is a pre-sharded copy for {meta.engine}, not {spec.engine}")
    source = meta.source.path
    fingerprint = (
        store.source_fingerprint(source) if os.path.isdir(source) else dict(meta.source.fingerprint)
    )
    why = store.mismatch(copy, _wanted(spec, host, fingerprint))
    if why is not None:
        raise PlanError(
            f"{spec.model} is a pre-sharded copy that cannot serve this plan: {why}",
            hint=f"serve the source ({source}) instead, or make a matching copy: harness shard "
            f"{source} --tp {spec.tp}",
        )
    note = f"serving the pre-sharded copy {spec.model} ({store.describe(meta)}) of {source}"
    return ShardChoice(spec.model, served_name=os.path.basename(source.rstrip("/")), notes=(note,))
