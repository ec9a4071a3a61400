"""What the library prints through: anything with rich's ``Console.print`` signature.

The watchdog and the campaigns report progress to a console they are given (a rich
``Console`` from the CLI, or nothing); they never import rich's console themselves, so a
program that embeds harness can pass its own object with a ``print`` method.
"""

from __future__ import annotations

from typing import Any, Protocol


class Console(Protocol):
    """A sink for progress lines (rich markup allowed): ``rich.console.Console`` fits."""

    def print(self, *objects: Any, **kwargs: Any) -> None: ...


__all__ = ["Console"]
