"""Known TP hang signatures (pure, apart from reading the catalogue files): data, not code.

The catalogue is YAML (``harness/watchdog/signatures.yaml``, extended with ``--signatures
FILE``). Each signature has a ``name``, the likely ``cause`` in one sentence, the ``next_step``
(a profile to add, a flag, a doctor check), optional ``links``, and what it ``match``-es: every
condition of ``all``, at least one of ``any`` (when given), none of ``none``; ``also`` adds
evidence without deciding. A condition is one key:

==================  ===========================================================================
``log``             a regex found in a line of ``server.log.tail`` or an NCCL debug file
``stack``           a regex found in a frame (``func (file:line)``) of any process's stack
``all_peers_in``    a regex found in the stack of every member of a peer group (TP workers,
                    ranks: two or more)
``shape``           ``odd-one-out`` (one rank elsewhere while its peers wait in a collective),
                    ``same-collective`` (every rank of a group in the same collective),
                    ``idle-workers`` (the engine core waits on workers that all sit idle)
``state``           some process in state ``T``, ``D`` or ``Z``
``gpus``            ``one-busy``, ``one-idle`` (one GPU idle while the others are busy),
                    ``all-busy``
``nvidia_smi``      ``timeout`` (the tool did not answer: a wedged GPU or driver) or ``error``
``kind``            a regex over the incident's ``kind (rule)``, e.g. ``startup-hang``
``process``         a regex over a process's role and command line
``env``             a regex over the ``NAME=value`` lines of the processes' environments
``profile``         a profile of the run's plan
``image_pixels_over``  a request in flight carries an image of more pixels than this
==================  ===========================================================================

``cause`` and ``next_step`` may say ``{odd}``: the odd process out and how it differs
(``Worker_TP1 stopped (state T)``). Matching is a pure function of the incident's facts
(:mod:`harness.watchdog.matching`); signatures are tried in order, a user's files first, and
the first match is the ``likely`` line of ``summary.md``. A user's signature with a shipped
name replaces it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import BadInput
from harness.userfiles import key_lines, key_path, line_of, parse_yaml, read_user_text

#: Environment variable naming the user's catalogue files (``os.pathsep``-separated); the
#: ``--signatures FILE`` option sets it so that every process of a run (a detached watcher, a
#: campaign's steps) reads the same files.
ENV_VAR = "HARNESS_SIGNATURES"
SHIPPED = Path(__file__).resolve().parent / "signatures.yaml"
MAX_BYTES = 1024 * 1024
_PLACEHOLDERS = ("odd",)


class SignatureError(BadInput):
    """A signature file is malformed, has an unknown key, or a regex that does not compile."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Shape = Literal["odd-one-out", "same-collective", "idle-workers"]
GpuShape = Literal["one-busy", "one-idle", "all-busy"]


class Condition(_Strict):
    """One thing to look for (exactly one key)."""

    log: str | None = None
    stack: str | None = None
    all_peers_in: str | None = None
    shape: Shape | None = None
    state: Literal["T", "D", "Z"] | None = None
    gpus: GpuShape | None = None
    nvidia_smi: Literal["timeout", "error"] | None = None
    kind: str | None = None
    process: str | None = None
    env: str | None = None
    profile: str | None = None
    image_pixels_over: int | None = Field(default=None, gt=0)

    @field_validator("log", "stack", "all_peers_in", "kind", "process", "env")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"the regex {value!r} does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_key(self) -> Condition:
        given = [k for k, v in self.__dict__.items() if v is not None]
        if len(given) != 1:
            keys = ", ".join(type(self).model_fields)
            raise ValueError(
                f"a condition has exactly one key (got {', '.join(given) or 'none'}; valid: {keys})"
            )
        return self

    @property
    def key(self) -> str:
        return next(k for k, v in self.__dict__.items() if v is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.key)


class MatchSpec(_Strict):
    all: list[Condition] = Field(default_factory=list)
    any: list[Condition] = Field(default_factory=list)
    none: list[Condition] = Field(default_factory=list)
    #: Evidence only: reported when they hold, never deciding the match.
    also: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> MatchSpec:
        if not self.all and not self.any:
            raise ValueError("match needs at least one condition in `all` or `any`")
        return self


class Signature(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    cause: str = Field(min_length=1)
    next_step: str = Field(min_length=1)
    links: list[str] = Field(default_factory=list)
    engines: list[str] = Field(default_factory=list)
    match: MatchSpec

    @field_validator("cause", "next_step")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            value.format_map({k: "x" for k in _PLACEHOLDERS})
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(
                f"unknown placeholder or stray brace in {value!r} ({exc}); valid: "
                + ", ".join("{" + k + "}" for k in _PLACEHOLDERS)
                + " (write {{ and }} for braces)"
            ) from None
        return " ".join(value.split())


class CatalogueFile(_Strict):
    """The schema of one signature file."""

    version: Literal[1] = 1
    signatures: list[Signature] = Field(min_length=1)


@dataclass(frozen=True)
class Catalogue:
    """Signatures in the order they are tried, with the file each came from."""

    signatures: tuple[tuple[Signature, str], ...]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(src for _sig, src in self.signatures))


# --------------------------------------------------------------------------------------------
# Reading and validating


def parse_catalogue(text: str, source: str) -> list[Signature]:
    """Validate one signature file's YAML text; every error is one line with ``source:line``."""
    data, node = parse_yaml(text, source, error=SignatureError)
    if not isinstance(data, Mapping):
        raise SignatureError(
            f"{source}:1: a signature file is a mapping with a `signatures:` list "
            "(see harness/watchdog/signatures.yaml)"
        )
    lines = key_lines(node)
    try:
        parsed = CatalogueFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = line_of(lines, loc)
        if err["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r} in {key_path(loc[:-1]) or 'the file'}"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            message = f"{key_path(loc) or 'the file'}: {msg}"
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise SignatureError(f"{source}:{line}: {message}{suffix}") from None
    seen: dict[str, int] = {}
    for i, sig in enumerate(parsed.signatures):
        if sig.name in seen:
            line = lines.get(("signatures", i, "name"), 1)
            raise SignatureError(
                f"{source}:{line}: signature name {sig.name!r} is used twice in this file"
            )
        seen[sig.name] = i
    return parsed.signatures


def load_file(path: str | os.PathLike[str]) -> list[Signature]:
    """Read and validate one signature file (binary, empty, huge, unreadable: one line)."""
    text = read_user_text(
        path, what="signature file", kind="YAML", max_bytes=MAX_BYTES, error=SignatureError
    )
    return parse_catalogue(text, os.fspath(path))


def user_files(env: Mapping[str, str] | None = None) -> list[str]:
    """The user's catalogue files named by ``$HARNESS_SIGNATURES``."""
    value = (os.environ if env is None else env).get(ENV_VAR, "")
    return [p for p in value.split(os.pathsep) if p]


def load_catalogue(paths: Sequence[str | os.PathLike[str]] = ()) -> Catalogue:
    """The user's files (in order) before the shipped catalogue; a user's signature replaces a
    shipped one of the same name."""
    ordered: list[tuple[Signature, str]] = []
    names: set[str] = set()
    for path in [*paths, SHIPPED]:
        for sig in load_file(path):
            if sig.name not in names:
                names.add(sig.name)
                ordered.append((sig, os.fspath(path)))
    return Catalogue(tuple(ordered))
