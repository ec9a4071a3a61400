"""Secrets never reach a bundle (pure).

A variable is secret when its name contains TOKEN, KEY, SECRET, PASSWORD (any case), or is
``HF_TOKEN``. A :class:`Redactor` is built from every environment the capture sees (ours, the
launch spec's, each process's) and scrubs every text written under ``runs/``: the values of
secret variables wherever they appear (a log line, a command line, a stack), and the argument
after flags such as ``--api-key``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MASK = "***REDACTED***"
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Values shorter than this are not scrubbed from free text (a secret "1" would mangle logs);
# they are still masked in env.txt by name.
MIN_SECRET_LEN = 4
_SECRET_FLAGS = re.compile(
    r"(?P<flag>--(?:api-key|hf-token|token|password|secret|access-key|secret-key)"
    r"(?:=|\s+))(?P<value>\S+)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's value must never be written."""
    return name == "HF_TOKEN" or bool(_SECRET_NAME.search(name))


@dataclass
class Redactor:
    """Scrubs known secret values and ``--api-key VALUE`` style arguments from text."""

    values: set[str] = field(default_factory=set)

    @classmethod
    def from_envs(cls, *envs: Mapping[str, str] | None) -> Redactor:
        r = cls()
        for env in envs:
            if env:
                r.add_env(env)
        return r

    def add_env(self, env: Mapping[str, str]) -> None:
        for name, value in env.items():
            if is_secret_name(name) and value and len(value) >= MIN_SECRET_LEN:
                self.values.add(value)

    def add_values(self, values: Iterable[str]) -> None:
        self.values.update(v for v in values if len(v) >= MIN_SECRET_LEN)

    def text(self, text: str) -> str:
        """``text`` with every secret value and secret flag argument masked."""
        # Longest first, so a secret that contains another is masked whole.
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return _SECRET_FLAGS.sub(lambda m: m["flag"] + MASK, text)

    def env_lines(self, env: Mapping[str, str]) -> list[str]:
        """``NAME=value`` lines, sorted, secret values masked by name and by value."""
        lines = []
        for name in sorted(env):
            value = MASK if is_secret_name(name) else self.text(env[name])
            lines.append(f"{name}={value}")
        return lines

    def argv(self, argv: Iterable[str]) -> list[str]:
        """A command line with secret arguments masked (``--api-key X`` -> ``--api-key ***``)."""
        out: list[str] = []
        mask_next = False
        for arg in argv:
            if mask_next:
                out.append(MASK)
                mask_next = False
                continue
            if _SECRET_FLAGS.fullmatch(arg + " x") and "=" not in arg:
                mask_next = True
                out.append(arg)
                continue
            out.append(self.text(arg))
        return out
