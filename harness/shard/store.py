"""Pre-sharded copies of a checkpoint: where they live, their metadata file, and choosing one.

A copy made by ``harness shard`` is a directory holding the engine's per-rank files, the
source's non-weight files (config, tokenizer, ...) and ``harness-shard.json``: the source
(path and fingerprint), TP, engine, engine version, device, the engine arguments that shape the
weights (``--dtype``, ``--quantization``), the files with their sizes, and ``complete``. Only a
copy verified complete is ever written with ``complete: true`` (an incomplete one is removed,
or kept with ``complete: false`` for inspection), so a plan can trust the flag, after checking
that every listed file is still there with its size.

Copies live under ``$HARNESS_SHARDS_DIR`` (default ``~/.cache/harness/shards``) in one folder
per source directory; a copy written elsewhere (``--dest``) leaves a pointer there, so plans
find it too. :func:`choose` is pure: every copy that does not match the plan is explained.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import BadInput
from harness.userfiles import MIB, read_user_text

META_FILE = "harness-shard.json"
SHARDS_DIR_ENV = "HARNESS_SHARDS_DIR"
LINKS_DIR = "links"
META_MAX_BYTES = 16 * MIB
#: Engine flags whose values change the saved weights: a copy made with other values is not
#: the same checkpoint.
WEIGHT_SHAPING_FLAGS = ("--dtype", "--quantization", "--revision", "--hf-overrides")
#: The load format a vLLM copy is served with.
VLLM_LOAD_FORMAT = "sharded_state"


class ShardFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    size: int = Field(ge=0)
    rank: int | None = None


class ShardSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    fingerprint: dict[str, str]


class ShardMeta(BaseModel):
    """``harness-shard.json``."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    complete: bool
    engine: Literal["vllm", "lmdeploy"]
    engine_version: str
    device: Literal["cpu", "cuda"]
    tp: int = Field(ge=1)
    load_format: str = VLLM_LOAD_FORMAT
    source: ShardSource
    weight_args: dict[str, str] = Field(default_factory=dict)
    files: list[ShardFile] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    created_at: str = ""
    harness_version: str = ""


def shards_root() -> Path:
    """Where copies live: ``$HARNESS_SHARDS_DIR``, else ``~/.cache/harness/shards``."""
    env = os.environ.get(SHARDS_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "harness" / "shards"


def source_key(model_dir: str) -> str:
    """The folder of one source directory's copies: its name and a hash of its full path."""
    path = os.path.realpath(model_dir)
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    return f"{os.path.basename(path) or 'model'}-{digest}"


def copy_name(engine: str, version: str, device: str, tp: int) -> str:
    return f"{engine}-{version}-{device}-tp{tp}"


def default_dest(model_dir: str, engine: str, version: str, device: str, tp: int) -> Path:
    return shards_root() / source_key(model_dir) / copy_name(engine, version, device, tp)


def _sha256(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if limit is not None:
            digest.update(fh.read(limit))
        else:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def source_fingerprint(model_dir: str) -> dict[str, str]:
    """What identifies a source checkpoint cheaply: the hash of ``config.json``, of the weight
    index when there is one, else of each safetensors file's header (names, shapes, dtypes and
    offsets of every tensor) and its size. A re-downloaded or edited checkpoint changes it."""
    root = Path(model_dir)
    out: dict[str, str] = {}
    config = root / "config.json"
    if config.is_file():
        out["config.json"] = _sha256(config)
    indexes = sorted(root.glob("*.index.json"))
    for index in indexes:
        out[index.name] = _sha256(index)
    if not indexes:
        for weights in sorted(root.glob("*.safetensors")):
            out[weights.name] = f"{weights.stat().st_size}:{_safetensors_header_hash(weights)}"
    return out


def _safetensors_header_hash(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if length > 100 * MIB:
            return "?"
        return hashlib.sha256(head + fh.read(length)).hexdigest()


def read_meta(directory: str | os.PathLike[str]) -> ShardMeta | None:
    """A directory's ``harness-shard.json``; None when it has none. A file that is there but
    unreadable or malformed is bad input (one line, exit 2)."""
    path = Path(directory) / META_FILE
    if not path.exists():
        return None
    text = read_user_text(path, what="shard metadata file", kind="JSON", max_bytes=META_MAX_BYTES)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{path}: not JSON: {exc}") from None
    except RecursionError:
        raise BadInput(f"{path}: not JSON harness can read: nested too deeply") from None
    try:
        return ShardMeta.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "top level"
        raise BadInput(
            f"{path}: not a harness shard metadata file ({where}: {first.get('msg')})"
        ) from None


def write_meta(directory: Path, meta: ShardMeta) -> Path:
    path = directory / META_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(meta.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return path


def register_link(model_dir: str, copy_dir: Path, meta: ShardMeta) -> Path | None:
    """Leave a pointer to a copy written outside the store, so plans find it."""
    store = shards_root() / source_key(model_dir)
    try:
        if copy_dir.resolve().is_relative_to(store.resolve()):
            return None
        links = store / LINKS_DIR
        links.mkdir(parents=True, exist_ok=True)
        link = links / (copy_name(meta.engine, meta.engine_version, meta.device, meta.tp) + ".json")
        link.write_text(json.dumps({"path": str(copy_dir.resolve())}) + "\n")
        return link
    except OSError:
        return None


def copies_of(model_dir: str) -> list[Path]:
    """Every directory that may be a copy of ``model_dir``: folders in its store entry and the
    targets of its links (whether they still exist or not)."""
    store = shards_root() / source_key(model_dir)
    found: list[Path] = []
    if not store.is_dir():
        return found
    for entry in sorted(store.iterdir()):
        if entry.is_dir() and entry.name != LINKS_DIR:
            found.append(entry)
    links = store / LINKS_DIR
    if links.is_dir():
        for link in sorted(links.glob("*.json")):
            try:
                target = json.loads(link.read_text()).get("path")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(target, str) and Path(target) not in found:
                found.append(Path(target))
    return found


# --------------------------------------------------------------------------- choosing a copy


@dataclass(frozen=True)
class Wanted:
    """What the plan would serve: a copy must match all of it."""

    engine: str
    engine_version: str | None
    device: str
    tp: int
    fingerprint: Mapping[str, str]
    weight_args: Mapping[str, str]


@dataclass(frozen=True)
class Candidate:
    """A copy found on disk: its metadata (or why it has none), and which files are missing."""

    path: Path
    meta: ShardMeta | None
    problem: str | None = None
    missing_files: tuple[str, ...] = ()


def inspect(path: Path) -> Candidate:
    """Read a copy's metadata and check its files are all there with their sizes."""
    if not path.is_dir():
        return Candidate(path, None, "the directory is gone")
    try:
        meta = read_meta(path)
    except BadInput as exc:
        return Candidate(path, None, exc.message)
    if meta is None:
        return Candidate(path, None, f"no {META_FILE}: not made (or not finished) by harness shard")
    missing = []
    for item in meta.files:
        file = path / item.name
        try:
            if file.stat().st_size != item.size:
                missing.append(f"{item.name} (size changed)")
        except OSError:
            missing.append(item.name)
    return Candidate(path, meta, None, tuple(missing))


def mismatch(candidate: Candidate, wanted: Wanted) -> str | None:
    """Why this copy cannot serve the plan (None: it can)."""
    meta = candidate.meta
    if meta is None:
        return candidate.problem or "unreadable"
    if not meta.complete:
        shown = ", ".join(meta.missing[:4]) + (" ..." if len(meta.missing) > 4 else "")
        return f"incomplete (missing tensors: {shown or 'unknown'}); harness never serves it"
    if candidate.missing_files:
        return f"damaged: {', '.join(candidate.missing_files[:3])} missing"
    if meta.engine != wanted.engine:
        return f"made for {meta.engine}, not {wanted.engine}"
    if meta.tp != wanted.tp:
        return f"made for TP {meta.tp}, this plan is TP {wanted.tp}"
    if meta.device != wanted.device:
        return f"made on {meta.device}, this plan runs on {wanted.device}"
    if wanted.engine_version is None:
        return (
            "the engine version where the server runs is unknown (the copy needs "
            f"{meta.engine} {meta.engine_version})"
        )
    if meta.engine_version != wanted.engine_version:
        return (
            f"made with {meta.engine} {meta.engine_version}, the server runs "
            f"{wanted.engine_version}"
        )
    if dict(meta.source.fingerprint) != dict(wanted.fingerprint):
        changed = sorted(
            set(meta.source.fingerprint.items()) ^ set(wanted.fingerprint.items()),
        )
        names = sorted({name for name, _ in changed})
        return f"the source changed since it was made ({', '.join(names[:3])})"
    if dict(meta.weight_args) != dict(wanted.weight_args):
        return (
            f"made with engine arguments {_args_words(meta.weight_args)}, this plan has "
            f"{_args_words(wanted.weight_args)}"
        )
    return None


def _args_words(args: Mapping[str, str]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(args.items())) or "(none)"


def choose(candidates: Iterable[Candidate], wanted: Wanted) -> tuple[Candidate | None, list[str]]:
    """The first copy that matches, and one line for every copy that does not (never silent)."""
    chosen: Candidate | None = None
    notes: list[str] = []
    for candidate in candidates:
        why = mismatch(candidate, wanted)
        if why is None and chosen is None:
            chosen = candidate
        elif why is not None:
            notes.append(f"the pre-sharded copy at {candidate.path} is not used: {why}")
    return chosen, notes


def weight_args(engine_args: Iterable[str]) -> dict[str, str]:
    """The weight-shaping flags among engine arguments (``--dtype float32`` or ``--dtype=...``)."""
    tokens = list(engine_args)
    out: dict[str, str] = {}
    for i, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name in WEIGHT_SHAPING_FLAGS:
            if not eq:
                value = tokens[i + 1] if i + 1 < len(tokens) else ""
            out[name] = value
    return out


def describe(meta: ShardMeta) -> str:
    return f"{meta.engine} {meta.engine_version}, {meta.device}, TP {meta.tp}"


def meta_summary(meta: ShardMeta) -> dict[str, Any]:
    return {"engine": meta.engine, "version": meta.engine_version, "tp": meta.tp}
