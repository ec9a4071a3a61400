"""Headless Chromium for the report tests: ``report.html`` must open offline with every chart
rendered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(html: Path, user_data: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``html`` after headless Chromium loaded it (scripts run); with
    ``screenshot``, also a PNG of the page."""
    binary = chromium()
    assert binary is not None
    flags = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}"]
    dom = subprocess.run(
        [*flags, "--dump-dom", html.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    if screenshot is not None:
        subprocess.run(
            [
                *flags,
                f"--screenshot={screenshot}",
                "--window-size=1200,3000",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return dom
