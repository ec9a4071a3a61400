"""Debug profiles: validated YAML files composed left to right (pure, apart from reading files).

A profile may set, per engine and in common, engine arguments and environment variables;
container options (IPC mode, shm size, network, capabilities, ulimits, volumes); deadlines;
watchdog settings; and load-side limits. ``--profile debug,vlm-safe`` composes shipped profiles
by name; an item may also be the path of a user's YAML file.

Composition: mappings merge key by key (a later profile wins); ``cap_add`` is a union; an engine
argument set to ``false`` (or ``null``) in a later profile removes it.

Every error names the file and line and lists the valid choices, e.g.::

    profiles/mine.yaml:7: unknown key 'shm' in container (valid: cap_add, gpus, image, ...)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.errors import ProfileError
from harness.spec import Deadlines, LoadLimits, OnHang, VolumeSpec, WatchSettings
from harness.userfiles import (
    PROFILE_MAX_BYTES,
    key_lines,
    key_path,
    line_of,
    parse_yaml,
    read_user_text,
)

Scalar = str | int | float | bool
ArgValue = str | int | float | bool | None

ENGINES = ("vllm", "lmdeploy", "sim")


def shipped_profiles_dir() -> Path:
    """Where the shipped profiles live: in the wheel, or at the repository root when editable."""
    packaged = Path(__file__).resolve().parent / "_profiles"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "profiles"


#: The longest time a profile may set (30 days): longer is a typo, and far longer overflows
#: the waits that use it (``threading`` and ``time.sleep`` refuse timeouts past ~292 years).
MAX_SECONDS = 30 * 24 * 3600


class _Strict(BaseModel):
    # inf and nan are refused: a deadline of .inf is no deadline.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EngineSection(_Strict):
    """Engine-specific settings: ``args`` maps a flag to its value (``true``: bare flag;
    ``false``/``null``: remove a flag an earlier profile set)."""

    args: dict[str, ArgValue] = Field(default_factory=dict)
    env: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _flags_start_with_dashes(cls, value: dict[str, ArgValue]) -> dict[str, ArgValue]:
        for flag in value:
            if not flag.startswith("--"):
                raise ValueError(f"engine argument {flag!r} must start with '--'")
        return value


class ContainerOptions(_Strict):
    """Container settings a profile may set (used with ``--runtime docker``)."""

    image: str | None = None
    ipc_mode: str | None = None
    shm_size: str | None = None
    network_mode: str | None = None
    cap_add: list[str] = Field(default_factory=list)
    ulimits: dict[str, int] = Field(default_factory=dict)
    volumes: dict[str, VolumeSpec] = Field(default_factory=dict)
    gpus: str | int | list[int] | None = None


class DeadlinesPatch(_Strict):
    startup_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    startup_log_silence_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    stop_grace_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    request_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)


class WatchPatch(_Strict):
    stall_after_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    canary_interval_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    canary_deadline_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    engine_stall_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    on_hang: OnHang | None = None
    enabled: bool | None = None


class LoadPatch(_Strict):
    max_image_pixels: int | None = Field(default=None, gt=0)
    max_images_per_request: int | None = Field(default=None, gt=0)


class ProfileFile(_Strict):
    """The schema of one profile YAML file."""

    description: str = ""
    warning: str | None = None
    env: dict[str, Scalar] = Field(default_factory=dict)
    vllm: EngineSection = Field(default_factory=EngineSection)
    lmdeploy: EngineSection = Field(default_factory=EngineSection)
    sim: EngineSection = Field(default_factory=EngineSection)
    container: ContainerOptions = Field(default_factory=ContainerOptions)
    deadlines: DeadlinesPatch = Field(default_factory=DeadlinesPatch)
    watch: WatchPatch = Field(default_factory=WatchPatch)
    load: LoadPatch = Field(default_factory=LoadPatch)


@dataclass
class ComposedProfile:
    """The result of composing profiles left to right, for one engine."""

    names: list[str]
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, ArgValue] = field(default_factory=dict)
    container: ContainerOptions = field(default_factory=ContainerOptions)
    deadlines: Deadlines = field(default_factory=Deadlines)
    watch: WatchSettings = field(default_factory=WatchSettings)
    load: LoadLimits = field(default_factory=LoadLimits)
    warnings: list[str] = field(default_factory=list)


def available_profiles() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in shipped_profiles_dir().glob("*.yaml"))


def _looks_like_path(item: str) -> bool:
    return "/" in item or item.endswith((".yaml", ".yml"))


def resolve_profile_path(item: str) -> Path:
    """A shipped profile's file, or a user's YAML file; one clear error otherwise.

    A path that exists is returned whatever it is: :func:`load_profile` says what is wrong
    with a directory or an unreadable file.
    """
    if _looks_like_path(item):
        path = Path(item).expanduser()
        if not os.path.lexists(path):
            raise ProfileError(f"profile file {item} does not exist")
        return path
    candidate = shipped_profiles_dir() / f"{item}.yaml"
    if not candidate.is_file():
        valid = ", ".join(available_profiles())
        raise ProfileError(f"unknown profile {item!r} (valid: {valid}; or the path of a YAML file)")
    return candidate


def split_profile_list(values: Iterable[str]) -> list[str]:
    """``["debug,vlm-safe", "net"]`` -> ``["debug", "vlm-safe", "net"]``."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The field names valid at ``loc`` (the parent of an unknown key)."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
        if current is None:
            return None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def parse_profile(text: str, source: str) -> ProfileFile:
    """Validate one profile's YAML text; errors carry ``source:line``.

    A key given twice in one mapping is refused (YAML would keep the last one silently).
    """
    data, node = parse_yaml(text, source, error=ProfileError)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ProfileError(f"{source}:1: a profile must be a mapping of keys to values")
    lines = key_lines(node)
    try:
        return ProfileFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = line_of(lines, loc)
        dotted = key_path(loc)
        if err["type"] == "extra_forbidden":
            parent = loc[:-1]
            valid = _valid_keys(ProfileFile, parent)
            where = f" in {key_path(parent)}" if parent else ""
            choices = f" (valid: {', '.join(valid)})" if valid else ""
            message = f"unknown key {loc[-1]!r}{where}{choices}"
        else:
            message = f"{dotted}: {err['msg']}"
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ProfileError(f"{source}:{line}: {message}{suffix}") from None


def load_profile(item: str) -> ProfileFile:
    """Read and validate one profile by name or path.

    A file that is binary, not UTF-8, empty, a directory, unreadable or over
    :data:`~harness.userfiles.PROFILE_MAX_BYTES` is one :class:`ProfileError` line.
    """
    path = resolve_profile_path(item)
    text = read_user_text(
        path, what="profile", kind="YAML", max_bytes=PROFILE_MAX_BYTES, error=ProfileError
    )
    return parse_profile(text, str(path))


_TEMPLATE = re.compile(r"\{([a-z_]+)\}")


_PLACEHOLDER_SOURCES = {
    "iface": "pass --net-iface IFACE (no default route was found to detect it)",
    "host_ip": "pass --host-ip IP (no address was found to detect it)",
}


def render_template(value: str, variables: Mapping[str, str | None], source: str) -> str:
    """Fill ``{run_dir}``-style placeholders; an unknown or unset placeholder is an error."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            valid = ", ".join("{" + k + "}" for k in sorted(variables))
            raise ProfileError(f"{source}: unknown placeholder {{{name}}} (valid: {valid})")
        filled = variables[name]
        if filled is None:
            how = _PLACEHOLDER_SOURCES.get(name, "set it on the command line")
            raise ProfileError(f"profile {source} needs {{{name}}}: {how}")
        return filled

    return _TEMPLATE.sub(sub, value)


def _scalar_to_str(value: Scalar) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def compose(
    items: list[str], engine: str, variables: Mapping[str, str | None] | None = None
) -> ComposedProfile:
    """Load ``items`` (names or paths) and compose them left to right for ``engine``.

    ``variables`` fill placeholders such as ``{run_dir}``, ``{iface}``, ``{host_ip}`` in
    environment values and engine arguments.
    """
    if engine not in ENGINES:
        raise ProfileError(f"unknown engine {engine!r} (valid: {', '.join(ENGINES)})")
    variables = dict(variables or {})
    result = ComposedProfile(names=list(items))
    container: dict[str, Any] = {}
    cap_add: list[str] = []
    ulimits: dict[str, int] = {}
    volumes: dict[str, VolumeSpec] = {}
    deadlines: dict[str, Any] = {}
    watch: dict[str, Any] = {}
    load: dict[str, Any] = {}
    for item in items:
        profile = load_profile(item)
        section: EngineSection = getattr(profile, engine)
        for key, value in {**profile.env, **section.env}.items():
            result.env[key] = render_template(_scalar_to_str(value), variables, item)
        for flag, arg in section.args.items():
            if arg is None or arg is False:
                result.args.pop(flag, None)
            elif isinstance(arg, str):
                result.args[flag] = render_template(arg, variables, item)
            else:
                result.args[flag] = arg
        for name in ("image", "ipc_mode", "shm_size", "network_mode", "gpus"):
            value = getattr(profile.container, name)
            if value is not None:
                container[name] = value
        cap_add.extend(c for c in profile.container.cap_add if c not in cap_add)
        ulimits.update(profile.container.ulimits)
        volumes.update(profile.container.volumes)
        deadlines.update(profile.deadlines.model_dump(exclude_none=True))
        watch.update(profile.watch.model_dump(exclude_none=True))
        load.update(profile.load.model_dump(exclude_none=True))
        if profile.warning:
            result.warnings.append(f"profile {item}: {profile.warning}")
    result.container = ContainerOptions(
        **container, cap_add=cap_add, ulimits=ulimits, volumes=volumes
    )
    result.deadlines = Deadlines(**deadlines)
    result.watch = WatchSettings(**watch)
    result.load = LoadLimits(**load)
    return result


def resolve_load_limits(items: list[str]) -> LoadLimits:
    """Load-side limits (e.g. ``vlm-safe``'s image pixel cap) of the given profiles."""
    return compose(items, "vllm", variables=_PLACEHOLDER_DEFAULTS).load


# Placeholders every profile may use; plan.py fills them with real values.
PLACEHOLDERS = ("run_dir", "iface", "host_ip", "model", "tp", "port")
_PLACEHOLDER_DEFAULTS: dict[str, str | None] = {name: f"<{name}>" for name in PLACEHOLDERS}
