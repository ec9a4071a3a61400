"""Checks on incident bundles that only a working capture passes.

A stack file exists whether py-spy worked or not (a failed dump writes its error there), so
"the file exists" proves nothing: :func:`py_spy_stacks` checks what only successful py-spy dumps
leave, in both the JSON and the text file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_THREAD_LINE = re.compile(r'^Thread (0x[0-9A-Fa-f]+|\d+) \([^)]*\)(: ".*")?$', re.MULTILINE)


def py_spy_stacks(
    bundle: Path, name: int | str, *, dumps: int = 2, frame: str | None = None
) -> str:
    """The text of ``stacks/<name>.txt`` once checked: ``stacks/<name>.json`` holds ``dumps``
    dumps, every one taken by py-spy (``ok``, ``source`` py-spy) with at least one thread that
    has frames, and the text shows a ``Thread N (state)`` line for each; with ``frame``, every
    dump has a frame whose name is ``frame``."""
    doc: dict[str, Any] = json.loads((bundle / "stacks" / f"{name}.json").read_text())
    taken = doc["dumps"]
    assert len(taken) == dumps, taken
    for d in taken:
        assert d["ok"] is True and d["source"].startswith("py-spy"), d
        threads = d["threads"]
        assert threads and any(t["frames"] for t in threads), d
        if frame is not None:
            names = {f["name"] for t in threads for f in t["frames"]}
            assert frame in names, (frame, sorted(names))
    text = (bundle / "stacks" / f"{name}.txt").read_text()
    assert "py-spy failed" not in text, text
    assert len(_THREAD_LINE.findall(text)) >= dumps, text
    return text
