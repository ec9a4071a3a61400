"""The asyncio event loop harness runs its own servers and clients on (foundation)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when it is importable (it roughly halves the per-request cost of both the
    simulator and the load client), unless ``HARNESS_LOOP=asyncio``; else the standard loop."""
    if os.environ.get("HARNESS_LOOP", "auto") != "asyncio":
        try:
            import uvloop

            return uvloop.new_event_loop
        except ImportError:
            pass
    return asyncio.new_event_loop
