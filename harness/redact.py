"""Secrets never reach a file (pure): the rules every writer under ``runs/`` applies.

A variable is secret when its name contains TOKEN, KEY, SECRET, PASSWORD, PASSWD or CREDENTIAL
(any case). A command-line argument is secret when it follows a flag such as ``--api-key``,
``--api-keys`` (LMDeploy, several values), ``--hf-token`` or ``--watermark-config`` (vLLM's
watermark key). A :class:`Redactor` knows the secret values seen so far (from environments and
command lines) and masks them wherever they appear: a log line, a command line, a stack, a
JSON file.

This module sits at the bottom of the layers (no harness imports), so that
:mod:`harness.rundir`, the engines and the watchdog can all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MASK = "***REDACTED***"
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Values shorter than this are not scrubbed from free text (a secret "1" would mangle logs);
# they are still masked by name (environment) and by position (after a secret flag).
MIN_SECRET_LEN = 4

#: Flags whose argument is a secret (engines, and tools people paste into command lines).
SECRET_FLAGS: tuple[str, ...] = (
    "--api-key",
    "--api-keys",
    "--hf-token",
    "--token",
    "--password",
    "--secret",
    "--access-key",
    "--secret-key",
    "--watermark-config",
)
# argparse front ends such as vLLM's accept ``--api_key`` for ``--api-key``.
_FLAG_ALTERNATIVES = "|".join(
    "[-_]".join(map(re.escape, f[2:].split("-")))
    for f in sorted(SECRET_FLAGS, key=len, reverse=True)
)
_SECRET_FLAG_TEXT = re.compile(
    rf"(?P<flag>--(?:{_FLAG_ALTERNATIVES})(?:=|\s+))(?P<value>[^\s-]\S*)", re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's value must never be written."""
    return bool(_SECRET_NAME.search(name))


def secret_flag(token: str) -> str | None:
    """The secret flag ``token`` is (``--api-key`` or ``--api-key=VALUE``), else None."""
    flag = token.split("=", 1)[0].lower()
    flag = "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag
    return flag if flag in SECRET_FLAGS else None


def secret_arguments(argv: Sequence[str]) -> list[str]:
    """The values given to secret flags in ``argv`` (``--api-key A B``, ``--hf-token=C``).

    A flag takes every following token up to the next option, as argparse does for the
    flags that accept several values; a bare flag (``--hf-token`` alone) has none.
    """
    values: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if secret_flag(token) is None:
            continue
        if "=" in token:
            values.append(token.split("=", 1)[1])
            continue
        while i < len(argv) and not argv[i].startswith("-"):
            values.append(argv[i])
            i += 1
    return [v for v in values if v]


@dataclass
class Redactor:
    """Masks known secret values, and the arguments of secret flags, in text."""

    values: set[str] = field(default_factory=set)

    @classmethod
    def from_envs(cls, *envs: Mapping[str, str] | None) -> Redactor:
        r = cls()
        for env in envs:
            if env:
                r.add_env(env)
        return r

    def add_env(self, env: Mapping[str, str]) -> None:
        """Learn the values of every secret-named variable of ``env``."""
        for name, value in env.items():
            if is_secret_name(name) and value and value != MASK:
                self.add_values([value])

    def add_argv(self, argv: Sequence[str]) -> None:
        """Learn the values given to secret flags in ``argv``."""
        self.add_values(secret_arguments(argv))

    def add_values(self, values: Iterable[str]) -> None:
        self.values.update(v for v in values if len(v) >= MIN_SECRET_LEN and v != MASK)

    def text(self, text: str) -> str:
        """``text`` with every secret value and secret flag argument masked."""
        # Longest first, so a secret that contains another is masked whole.
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return _SECRET_FLAG_TEXT.sub(lambda m: m["flag"] + MASK, text)

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``env`` with secret-named values masked and known secrets scrubbed."""
        return {
            name: MASK if is_secret_name(name) and value else self.text(value)
            for name, value in env.items()
        }

    def env_lines(self, env: Mapping[str, str]) -> list[str]:
        """``NAME=value`` lines, sorted, secret values masked by name and by value."""
        masked = self.env(env)
        return [f"{name}={masked[name]}" for name in sorted(masked)]

    def argv(self, argv: Iterable[str]) -> list[str]:
        """A command line with secret arguments masked (``--api-key X Y`` -> masks for X, Y)."""
        out: list[str] = []
        in_secret = False
        for arg in argv:
            flag = secret_flag(arg)
            if flag is not None:
                in_secret = "=" not in arg
                out.append(f"{arg.split('=', 1)[0]}={MASK}" if "=" in arg else arg)
                continue
            if in_secret and not arg.startswith("-"):
                out.append(MASK)
                continue
            in_secret = False
            out.append(self.text(arg))
        return out

    def json(self, value: Any) -> Any:
        """A JSON-like value with every string scrubbed; lists that hold flags as argv."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            if any(isinstance(v, str) and secret_flag(v) for v in value) and all(
                isinstance(v, str) for v in value
            ):
                return self.argv(value)
            return [self.json(v) for v in value]
        if isinstance(value, dict):
            return {k: self.json(v) for k, v in value.items()}
        return value


def redact_launch_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A launch spec's JSON mapping with no secret left in it.

    Secret-named variables of ``env`` are masked by name; every value they had, and every
    argument of a secret flag in ``argv``, is masked wherever else it appears in the spec.
    """
    redactor = Redactor()
    env = spec.get("env")
    if isinstance(env, Mapping):
        redactor.add_env({str(k): str(v) for k, v in env.items()})
    argv = spec.get("argv")
    if isinstance(argv, list):
        redactor.add_argv([str(a) for a in argv])
    out: dict[str, Any] = redactor.json(dict(spec))
    if isinstance(env, Mapping):
        out["env"] = redactor.env({str(k): str(v) for k, v in env.items()})
    return out


def restore_masked_env(env: Mapping[str, str], source: Mapping[str, str]) -> dict[str, str]:
    """``env`` read back from a redacted file, its masked values taken from ``source``.

    A process that re-reads ``launch_spec.json`` to start the server again (a detached
    watcher restarting after a hang) gets masks, not secrets; its parent passes the secret
    variables in its environment (never in argv or a file), and this puts them back.
    A mask without a value in ``source`` is dropped rather than passed on as the secret.
    """
    out: dict[str, str] = {}
    for name, value in env.items():
        if value != MASK:
            out[name] = value
        elif name in source:
            out[name] = source[name]
    return out
