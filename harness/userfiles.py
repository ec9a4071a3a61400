"""Reading the files a user hands in: one reader, one kind of error, never a traceback.

Profiles, workloads, the prompt files workloads point at and a model's ``config.json`` may be
anything: binary, another encoding, empty, a directory, unreadable, or huge. Every loader reads
through :func:`read_user_text`, which turns each of these into one line naming the file and
what is wrong with it, raised as the caller's :class:`~harness.errors.BadInput` subclass
(exit code 2)::

    mine.yaml: not UTF-8 text (byte 0xe9 at line 3, column 14, byte offset 52); a profile is a ...

YAML goes through :func:`parse_yaml`, which also refuses a key given twice in one mapping
(plain YAML keeps the last one silently, so a profile could lose a setting without a word).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from typing import Any

import yaml

from harness.errors import BadInput

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

#: Size caps. A profile or a workload is a few KiB; a model's config.json rarely reaches 100 KiB;
#: ShareGPT's well-known dump is about 640 MiB of JSON (and several times that once parsed).
PROFILE_MAX_BYTES = 1 * MIB
WORKLOAD_MAX_BYTES = 1 * MIB
MODEL_CONFIG_MAX_BYTES = 16 * MIB
PROMPT_FILE_MAX_BYTES = 1 * GIB

#: Nesting deeper than this is refused before PyYAML's recursive composer can overflow the stack.
MAX_YAML_DEPTH = 64


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``; whole units print without a fraction (``1 MiB``)."""
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor:
            value = size / factor
            if size % factor == 0 and unit != "GiB":
                return f"{size // factor} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} bytes"


def _position(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}, byte offset {offset}"


def decode_user_text(
    data: bytes, shown: str, *, what: str, kind: str, error: type[BadInput] = BadInput
) -> str:
    """UTF-8 text of a user's file (a leading byte-order mark is dropped).

    Raises ``error`` naming the first byte that is not UTF-8 (or a NUL byte, which no text file
    holds) by line, column and byte offset, so ``xxd -s OFFSET`` finds it.
    """
    what_it_is = f"a {what} is a {kind} text file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start]
        raise error(
            f"{shown}: not UTF-8 text (byte 0x{bad:02x} at {_position(data, exc.start)}); "
            f"{what_it_is}"
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise error(
            f"{shown}: binary data (a NUL byte at {_position(data, nul)}), not a {what}; "
            f"{what_it_is}"
        )
    return text.removeprefix("\ufeff")


def read_user_text(
    path: str | os.PathLike[str],
    *,
    what: str,
    kind: str,
    max_bytes: int,
    error: type[BadInput] = BadInput,
) -> str:
    """Read a file a user named, as UTF-8 text, or raise ``error`` with one line.

    ``what`` names the file's role in messages (``profile``, ``workload``, ``prompt file``);
    ``kind`` its format (``YAML``, ``JSON``). Refused, each with its own message: a path that
    does not exist, a directory, a device or socket, a file the process may not read, a file
    over ``max_bytes`` (checked before reading when the size is known, and while reading for
    pipes), an empty file, bytes that are not UTF-8, NUL bytes.
    """
    shown = os.fspath(path)
    try:
        info = os.stat(shown)
    except FileNotFoundError:
        raise error(f"{shown}: no such file") from None
    except OSError as exc:
        raise error(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{shown}: is a directory, not a {what} file")
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        raise error(f"{shown}: is a device or socket, not a {what} file")
    limit = f"the {human_size(max_bytes)} limit for a {what}"
    if info.st_size > max_bytes:
        # Just over the limit, a rounded size would read like the limit itself.
        size = (
            human_size(info.st_size) if info.st_size >= 2 * max_bytes else f"{info.st_size:,} bytes"
        )
        raise error(f"{shown}: {size} is over {limit}")
    try:
        with open(shown, "rb") as fh:
            # Bounded even when stat cannot tell the size (a pipe, /dev/stdin).
            data = fh.read(max_bytes + 1)
    except PermissionError:
        raise error(f"{shown}: permission denied (this user may not read it)") from None
    except OSError as exc:
        raise error(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{shown}: more than {limit}")
    if not data:
        raise error(f"{shown}: empty file (a {what} is a {kind} text file)")
    return decode_user_text(data, shown, what=what, kind=kind, error=error)


def key_path(parts: Iterable[object]) -> str:
    """``("vllm", "args", "--x")`` -> ``vllm.args.--x``, for messages: a key that is not a plain
    word (a newline, a dot, a space) is quoted, so a message stays one readable line."""
    return ".".join(
        str(part) if isinstance(part, int) or _PLAIN_KEY.fullmatch(str(part)) else repr(part)
        for part in parts
    )


_PLAIN_KEY = re.compile(r"[-\w]+")


# ----------------------------------------------------------------------------- YAML


_MERGE_TAG = "tag:yaml.org,2002:merge"

#: Values a document may expand to once aliases are followed: a few shared anchors are fine,
#: a "billion laughs" document is not.
MAX_YAML_VALUES = 1_000_000


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit, and a line number for every value an
    explicit tag cannot build."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    problem=f"nested more than {MAX_YAML_DEPTH} levels deep",
                    problem_mark=self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            # An explicit tag on a value it cannot build (`!!int abc`, `!!timestamp x`) or a
            # date that does not exist (`2020-13-45`) ends in a plain Python error in PyYAML.
            raise yaml.constructor.ConstructorError(
                problem=f"cannot read {node.tag.rsplit(':', 1)[-1]} value {_short(node)}: {exc}",
                problem_mark=node.start_mark,
            ) from None


def key_lines(node: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """The 1-based line of every mapping key / sequence item of a parsed YAML document, by
    path (``("signatures", 2, "name")``), so a validation error can name its line."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = (*prefix, key_node.value)
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                path = (*prefix, index)
                lines[path] = item.start_mark.line + 1
                walk(item, path)

    if node is not None:
        walk(node, ())
    return lines


def line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    """The line of ``loc`` or of its nearest parent that has one (1: the file's start)."""
    return next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), 1)


def _short(node: yaml.Node) -> str:
    text = repr(node.value) if isinstance(node, yaml.ScalarNode) else "(a collection)"
    return text if len(text) <= 40 else text[:37] + "..."


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, source: str, error: type[BadInput]) -> None:
    """Refuse a document that contains itself through an alias, or that expands to more than
    :data:`MAX_YAML_VALUES` values or :data:`MAX_YAML_DEPTH` levels once aliases are followed
    (iterative: chained aliases can go deeper than Python's stack)."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            entered.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            depths[key] = 1 + max((depths[id(child)] for child in children), default=0)
            where = f"{source}:{node.start_mark.line + 1}: malformed YAML: aliases"
            if sizes[key] > MAX_YAML_VALUES:
                raise error(f"{where} expand this to more than {MAX_YAML_VALUES:,} values")
            if depths[key] > MAX_YAML_DEPTH:
                raise error(f"{where} nest this more than {MAX_YAML_DEPTH} levels deep")
            continue
        if key in sizes:
            continue
        if key in entered:
            raise error(
                f"{source}:{node.start_mark.line + 1}: malformed YAML: an alias makes this "
                "value contain itself"
            )
        entered.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _check_duplicate_keys(
    loader: _StrictLoader, root: yaml.Node, source: str, error: type[BadInput]
) -> None:
    """Refuse a key given twice in one mapping, naming both lines and where the mapping is.

    Runs on the composed nodes, before merge keys are expanded: a key that overrides one
    merged in with ``<<: *anchor`` is what merge keys are for, not a duplicate.
    """
    visited: set[int] = set()
    found: list[tuple[int, str]] = []
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(node.value))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        first_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            stack.append((value_node, (*path, name)))
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            # Compare keys as YAML resolves them: `1` and `0x1` are the same key.
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = first_lines.get(key)
            except TypeError:
                continue  # an unhashable key: the constructor reports it with its line
            if first is None:
                first_lines[key] = line
            else:
                where = f" in {key_path(path)}" if path else ""
                found.append((line, f"duplicate key {key!r}{where} (first on line {first})"))
    if found:
        line, problem = min(found)
        raise error(f"{source}:{line}: {problem}; YAML would silently keep only the last one")


def parse_yaml(
    text: str, source: str, *, error: type[BadInput] = BadInput
) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document: ``(data, node)``, the node giving line numbers.

    Every problem is raised as ``error`` with ``source:line``: malformed YAML, a key given twice
    in one mapping (``duplicate key 'env' (first on line 2)``), nesting deeper than
    :data:`MAX_YAML_DEPTH`, aliases that recurse or expand beyond :data:`MAX_YAML_VALUES`, a
    value an explicit tag cannot build.
    """
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as exc:
        # Control characters, refused before parsing starts (PyYAML's reader).
        line = text.count("\n", 0, exc.position) + 1
        raise error(
            f"{source}:{line}: malformed YAML: character U+{exc.character:04X} is not allowed "
            "in YAML"
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node, source, error)
        _check_duplicate_keys(loader, node, source, error)
        return loader.construct_document(node), node
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{where}: malformed YAML: {problem}") from None
    except RecursionError:
        raise error(f"{source}: malformed YAML: nested too deeply") from None
    finally:
        loader.dispose()
