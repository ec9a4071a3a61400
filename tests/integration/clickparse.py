"""Check ``harness`` command lines with the commands' own click parsers, running nothing.

For tests/integration/test_docs.py. Run as ``python -m tests.integration.clickparse``: a JSON
list of ``{"argv": [...], "synopsis": bool}`` on stdin, a JSON list of ``null`` (parses) or the
reason it does not on stdout. A separate process, because parsing runs the options' callbacks
(``--signatures`` loads its file and exports ``HARNESS_SIGNATURES``) and imports every command.

- An example is parsed whole by ``Command.make_context`` (types, choices, required arguments,
  callbacks), and nothing may be left over (``harness sim`` ignores unknown options instead of
  refusing them: here they fail).
- A synopsis (``[--tp N]``, ``--engine vllm|lmdeploy|sim``, ``(plan options)``, ``...``) cannot
  be parsed as a command line: every option it names must be one of the command's, and each
  alternative it lists for an option with fixed choices must be one of them. Everything after
  ``--`` is the watched command, not harness's.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from harness.cli import cli
from harness.errors import HarnessError

_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _command(argv: list[str]) -> tuple[click.Context, str, click.Command | None, list[str]]:
    root = click.Context(cli, info_name="harness")
    args = list(argv)
    while args and args[0] == "--runs-dir":  # the root's only option
        args = args[2:]
    name = args[0] if args else ""
    return root, name, cli.get_command(root, name), args[1:]


def _options(command: click.Command) -> dict[str, click.Parameter]:
    found: dict[str, click.Parameter] = {"--runs-dir": click.Option(["--runs-dir"])}
    for param in command.params:
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("-"):
                found[opt] = param
    found.update({h: click.Option([h], is_flag=True) for h in ("-h", "--help")})
    return found


def check_synopsis(command: click.Command, name: str, words: list[str]) -> str | None:
    """Every option the synopsis names exists; listed alternatives are valid choices."""
    known = _options(command)
    if "--" in words:
        words = words[: words.index("--")]
    for i, word in enumerate(words):
        for opt in _OPTION.findall(word.strip("[]()")):
            if opt not in known:
                return f"harness {name} has no option {opt}"
            param = known[opt]
            if isinstance(param.type, click.Choice) and i + 1 < len(words):
                value = words[i + 1].strip("[]()")
                if "|" in value:
                    bad = [v for v in value.split("|") if v not in param.type.choices]
                    if bad:
                        return f"harness {name} {opt}: {bad} not among {list(param.type.choices)}"
    return None


def check(argv: list[str], synopsis: bool) -> str | None:
    """None when ``harness ARGV`` parses (or, for a synopsis, names only what exists)."""
    root, name, command, rest = _command(argv)
    if command is None:
        return f"no command {name!r}"
    if synopsis:
        return check_synopsis(command, name, rest)
    try:
        ctx = command.make_context(name, rest, parent=root)
    except click.ClickException as exc:
        return exc.format_message()
    except HarnessError as exc:
        return exc.message
    if ctx.args:
        return f"not options of harness {name}: {ctx.args}"
    return None


def main() -> None:
    tasks: list[dict[str, Any]] = json.load(sys.stdin)
    json.dump([check(t["argv"], t["synopsis"]) for t in tasks], sys.stdout)


if __name__ == "__main__":
    main()
