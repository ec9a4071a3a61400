"""Workloads: what each request looks like (pure models + YAML loading with line numbers).

A workload is a YAML file under ``profiles/workloads/`` (selected by name) or anywhere (selected by
path). It is validated with pydantic (unknown keys refused); a mistake is reported as
``file:line: message`` with the valid choices, exit code 2.

Example::

    description: short chat turns
    api: chat                  # chat | completions
    stream: true
    prompt:
      source: synthetic        # synthetic | jsonl | sharegpt
      tokens: {dist: uniform, min: 16, max: 128}
    max_tokens: {dist: fixed, value: 64}
    images:
      count: 1                 # images per request (a length distribution too)
      sizes:
        - {width: 224, height: 224, weight: 3}
        - {width: 4096, height: 4096, weight: 1}
      format: jpeg             # jpeg | png | mixed

Length distributions (tokens, counts): a bare integer (fixed), or ``{dist: fixed, value}``,
``{dist: uniform, min, max}``, ``{dist: normal, mean, std, min?, max?}``,
``{dist: lognormal, median, sigma, min?, max?}``.
"""

from __future__ import annotations

import functools
import json
import math
import random
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import WorkloadError
from harness.userfiles import (
    PROMPT_FILE_MAX_BYTES,
    WORKLOAD_MAX_BYTES,
    key_path,
    parse_yaml,
    read_user_text,
)

WORKLOAD_SUFFIXES = (".yaml", ".yml")


#: The largest length (tokens, images per request) a workload may ask for: 16 Mi. Larger is a
#: typo, and the prompt synthesiser would try to build a corpus that size.
MAX_LENGTH = 2**24


class _Model(BaseModel):
    # inf and nan are refused: a length or a weight of inf fails only once the run has started.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Fixed(_Model):
    dist: Literal["fixed"] = "fixed"
    value: int = Field(ge=0, le=MAX_LENGTH)

    def sample(self, rng: random.Random) -> int:
        return self.value

    @property
    def upper(self) -> int:
        return self.value


class Uniform(_Model):
    dist: Literal["uniform"]
    min: int = Field(ge=0, le=MAX_LENGTH)
    max: int = Field(ge=0, le=MAX_LENGTH)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.min, self.max)

    @property
    def upper(self) -> int:
        return self.max


class _Bounded(_Model):
    min: int = Field(default=0, ge=0, le=MAX_LENGTH)
    max: int | None = Field(default=None, ge=0, le=MAX_LENGTH)

    @model_validator(mode="after")
    def _ordered(self) -> _Bounded:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self

    def _clip(self, value: float) -> int:
        ceiling = self.max if self.max is not None else MAX_LENGTH
        if not math.isfinite(value):
            return ceiling if value > 0 else self.min
        return int(min(ceiling, max(self.min, round(min(value, ceiling)))))

    def _bound(self, typical_max: float) -> int:
        """``upper`` without a ``max``: a value above every sample but the rarest."""
        if self.max is not None:
            return self.max
        return max(self.min, min(MAX_LENGTH, int(typical_max) + 1))


class Normal(_Bounded):
    dist: Literal["normal"]
    mean: float = Field(ge=0, le=MAX_LENGTH)
    std: float = Field(ge=0, le=MAX_LENGTH)

    def sample(self, rng: random.Random) -> int:
        return self._clip(rng.normalvariate(self.mean, self.std))

    @property
    def upper(self) -> int:
        return self._bound(self.mean + 6 * self.std)


class LogNormal(_Bounded):
    dist: Literal["lognormal"]
    median: float = Field(gt=0, le=MAX_LENGTH)
    sigma: float = Field(ge=0, le=100)

    def sample(self, rng: random.Random) -> int:
        # rng.lognormvariate() is exp(normalvariate()): the same draws, without exp's overflow.
        log_value = rng.normalvariate(math.log(self.median), self.sigma)
        return self._clip(math.exp(min(log_value, math.log(MAX_LENGTH) + 1)))

    @property
    def upper(self) -> int:
        log_upper = math.log(self.median) + 6 * self.sigma
        return self._bound(math.exp(min(log_upper, math.log(MAX_LENGTH) + 1)))


Length = Annotated[Fixed | Uniform | Normal | LogNormal, Field(discriminator="dist")]


def _coerce_length(value: Any) -> Any:
    """A bare integer means a fixed value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"dist": "fixed", "value": value}
    return value


class PromptSpec(_Model):
    """Where prompts come from and how long synthetic ones are (in tokens)."""

    source: Literal["synthetic", "jsonl", "sharegpt"] = "synthetic"
    path: str | None = None
    field: str = "prompt"
    order: Literal["random", "sequential"] = "random"
    tokens: Length = Field(default_factory=lambda: Fixed(value=128))
    system: str | None = None

    _coerce = field_validator("tokens", mode="before")(_coerce_length)

    @model_validator(mode="after")
    def _path_needed(self) -> PromptSpec:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"prompt.source {self.source!r} needs prompt.path")
        return self


class ImageSize(_Model):
    """One image size of the mix; ``format`` overrides the spec's (photos are JPEG,
    screenshots PNG)."""

    width: int = Field(gt=0, le=65536)
    height: int = Field(gt=0, le=65536)
    weight: float = Field(default=1.0, gt=0, le=1e6)
    format: Literal["jpeg", "png", "mixed"] | None = None


class ImageSpec(_Model):
    """Images per request and their sizes; generated deterministically with Pillow."""

    count: Length = Field(default_factory=lambda: Fixed(value=1))
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    sizes: list[ImageSize] = Field(min_length=1)
    format: Literal["jpeg", "png", "mixed"] = "jpeg"
    quality: int = Field(default=85, ge=1, le=100)

    _coerce = field_validator("count", mode="before")(_coerce_length)


class Workload(_Model):
    """One workload file."""

    description: str = ""
    api: Literal["chat", "completions"] = "chat"
    stream: bool = True
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    max_tokens: Length = Field(default_factory=lambda: Fixed(value=128))
    ignore_eos: bool = False
    temperature: float | None = 0.0
    images: ImageSpec | None = None
    max_image_pixels: int | None = Field(default=None, gt=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    _coerce = field_validator("max_tokens", mode="before")(_coerce_length)

    @model_validator(mode="after")
    def _images_need_chat(self) -> Workload:
        if self.images is not None and self.api != "chat":
            raise ValueError("images need api: chat (completions requests carry text only)")
        return self


# ----------------------------------------------------------------------------- loading


def workload_dirs() -> list[Path]:
    """Where named workloads live: the repo's ``profiles/workloads`` or the installed copy."""
    here = Path(__file__).resolve().parent
    return [
        here.parent.parent / "profiles" / "workloads",
        here.parent / "_profiles" / "workloads",
    ]


def available_workloads() -> list[str]:
    names: set[str] = set()
    for d in workload_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.iterdir() if p.suffix in WORKLOAD_SUFFIXES)
    return sorted(names)


def resolve_workload(name_or_path: str) -> Path:
    """A workload name (``chat-short``) or a path to a YAML file -> the file.

    A path that exists is returned whatever it is: :func:`load_workload` says what is wrong
    with a directory or an unreadable file.
    """
    direct = Path(name_or_path).expanduser()
    if direct.suffix in WORKLOAD_SUFFIXES or "/" in name_or_path:
        if direct.exists():
            return direct.resolve()
        raise WorkloadError(
            f"workload file {name_or_path} does not exist",
            hint=f"named workloads: {', '.join(available_workloads())}",
        )
    for d in workload_dirs():
        for suffix in WORKLOAD_SUFFIXES:
            candidate = d / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    raise WorkloadError(
        f"unknown workload {name_or_path!r}; valid: {', '.join(available_workloads())}",
        hint="or give the path of a workload YAML file",
    )


def load_workload(name_or_path: str) -> tuple[Workload, Path]:
    """Read and validate a workload and the prompt file it names; errors name the file and
    line and the valid choices.

    A file that is binary, not UTF-8, empty, a directory, unreadable or too large
    (:data:`~harness.userfiles.WORKLOAD_MAX_BYTES`, ``PROMPT_FILE_MAX_BYTES``) is one
    :class:`WorkloadError` line.
    """
    path = resolve_workload(name_or_path)
    text = read_user_text(
        path, what="workload", kind="YAML", max_bytes=WORKLOAD_MAX_BYTES, error=WorkloadError
    )
    workload = parse_workload(text, str(path))
    if workload.prompt.source != "synthetic":
        # A broken prompt file is a broken workload: refuse it now, before a run is created or
        # a server contacted. The prompts are kept for the run's own read_prompt_file().
        read_prompt_file(workload.prompt, path.parent)
    return workload, path


def parse_workload(text: str, filename: str = "<workload>") -> Workload:
    """Validate workload YAML text (pure); raises :class:`WorkloadError` with ``file:line``.

    A key given twice in one mapping is refused (YAML would keep the last one silently).
    """
    data, node = parse_yaml(text, filename, error=WorkloadError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WorkloadError(
            f"{filename}:1: a workload is a mapping of keys, not {type(data).__name__}"
        )
    try:
        return Workload.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        tag_error = err["type"] in ("union_tag_invalid", "union_tag_not_found")
        lineno = _line_of(node, (*loc, "dist") if tag_error else loc)
        where = key_path(p for p in loc if not _is_tag(p)) or "(top level)"
        raise WorkloadError(
            f"{filename}:{lineno}: {where}: {_explain(err, loc)}",
            hint="see docs/load.md for the workload format",
        ) from None


_TAGS = {"fixed", "uniform", "normal", "lognormal"}


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and part in _TAGS


def _explain(err: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return f"unknown key {loc[-1]!r}" + (f"; valid keys: {valid}" if valid else "")
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return "dist must be one of: fixed, uniform, normal, lognormal"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"got {err.get('input')!r}; valid: {expected}"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


_TAG_MODELS: dict[str, type[BaseModel]] = {
    "fixed": Fixed,
    "uniform": Uniform,
    "normal": Normal,
    "lognormal": LogNormal,
}
_CHILD_MODELS: dict[tuple[type[BaseModel], str], type[BaseModel]] = {
    (Workload, "prompt"): PromptSpec,
    (Workload, "images"): ImageSpec,
    (ImageSpec, "sizes"): ImageSize,
}


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class validating the mapping at ``loc`` (to list its valid keys)."""
    model: type[BaseModel] | None = Workload
    for part in loc:
        if isinstance(part, int):
            continue
        if _is_tag(part):
            model = _TAG_MODELS[part]
            continue
        model = _CHILD_MODELS.get((model, str(part))) if model is not None else None
    return model


def _line_of(node: yaml.Node | None, loc: Sequence[Any]) -> int:
    """1-based line of the deepest YAML node on ``loc`` (pydantic's error location)."""
    best = node.start_mark.line + 1 if node is not None else 1
    current = node
    for part in loc:
        if current is None or _is_tag(part):
            continue
        nxt: yaml.Node | None = None
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                if key.value == str(part):
                    # An unknown key is best pointed at by its key, a bad value by its value.
                    nxt = value
                    best = key.start_mark.line + 1
                    break
        elif (
            isinstance(current, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(current.value)
        ):
            nxt = current.value[part]
            best = nxt.start_mark.line + 1
        if nxt is None:
            break
        current = nxt
    return best


# ----------------------------------------------------------------------------- prompt files


def read_prompt_file(spec: PromptSpec, base: Path) -> list[str]:
    """Prompts from a JSONL file (``field`` of each line) or a ShareGPT-style JSON file
    (the first human turn of each conversation). Paths are relative to the workload file.

    Every problem is one :class:`WorkloadError` line naming the file (and the line for JSONL):
    a file that is binary, not UTF-8, empty, a directory, unreadable or over
    :data:`~harness.userfiles.PROMPT_FILE_MAX_BYTES`; JSON that does not parse; no prompts.
    An unchanged file is parsed once per process (:func:`load_workload` reads it to check it,
    the run reads it again).
    """
    assert spec.path is not None
    path = Path(spec.path).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise WorkloadError(f"prompt file {path} does not exist")
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        return _parse_prompt_file(str(path), spec.source, spec.field)
    # Same file (inode), same size and times: same prompts.
    identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return list(_parse_prompt_file_cached(str(path), spec.source, spec.field, identity))


@functools.lru_cache(maxsize=4)
def _parse_prompt_file_cached(
    path: str, source: str, field: str, identity: tuple[int, ...]
) -> tuple[str, ...]:
    return tuple(_parse_prompt_file(path, source, field))


def _parse_prompt_file(path: str, source: str, field: str) -> list[str]:
    kind = "JSONL" if source == "jsonl" else "JSON"
    text = read_user_text(
        path, what="prompt file", kind=kind, max_bytes=PROMPT_FILE_MAX_BYTES, error=WorkloadError
    )
    prompts: list[str] = []
    if source == "jsonl":
        # Only "\n" ends a JSON Lines record; str.splitlines() would also split at U+2028.
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            obj = _json(line, f"{path}:{n}")
            value = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(value, str):
                raise WorkloadError(f"{path}:{n}: no string field {field!r}")
            prompts.append(value)
    else:
        data = _json(text, path)
        if not isinstance(data, list):
            raise WorkloadError(f"{path}: a ShareGPT file is a JSON list of conversations")
        for conv in data:
            turns = conv.get("conversations") if isinstance(conv, dict) else None
            if not isinstance(turns, list):
                continue
            for turn in turns:
                if isinstance(turn, dict) and turn.get("from") in ("human", "user"):
                    value = turn.get("value")
                    if isinstance(value, str) and value:
                        prompts.append(value)
                    break
    if not prompts:
        raise WorkloadError(f"{path}: no prompts found")
    return prompts


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise WorkloadError(f"{where}: not JSON: {exc}") from None
    except RecursionError:
        raise WorkloadError(f"{where}: not JSON this harness can read: nested too deeply") from None
