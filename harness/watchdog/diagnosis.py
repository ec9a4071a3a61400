"""Diagnosis steps of a capture (I/O around pure rules): the flight recorders' dumps, the
signature catalogue in force, and the facts a signature may look at that need reading (the
images of the requests in flight)."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import BadInput
from harness.watchdog import flightrec, probes
from harness.watchdog import matching as mt
from harness.watchdog import signatures as sg
from harness.watchdog.bundle import BundleWriter


def flight_recorder(
    writer: BundleWriter,
    envs: Sequence[Mapping[str, str]],
    *,
    before: set[Path],
    triggered: int,
    wait_s: float,
    notes: list[str],
) -> list[flightrec.FlightReport]:
    """Copy the flight-recorder dumps into ``flight_recorder/`` (waiting for the ones just
    asked for) and analyse them."""
    if triggered:
        probes.wait_for_dumps(envs, before, triggered, wait_s)
    files: dict[str, bytes] = {}
    for src in probes.debug_files(envs)["flight_recorder"][:64]:
        rel = f"flight_recorder/{src.name}"
        if writer.copy_binary(rel, src):
            try:
                files[src.name] = (writer.root / rel).read_bytes()
            except OSError:
                continue
    if not files:
        if triggered:
            notes.append("the flight recorder wrote no dump (no initialised process group?)")
        return []
    reports = flightrec.read_dumps(files)
    for report in reports:
        if report.groups:
            notes.append(f"flight recorder ({report.recorder}*): {report.missing_line()}")
    return reports


def catalogue(files: Sequence[str] | None, notes: list[str]) -> sg.Catalogue:
    """The shipped catalogue after the user's files (None: ``$HARNESS_SIGNATURES``); a user
    file that went bad since it was checked costs a note, never the capture."""
    chosen = list(files) if files is not None else sg.user_files()
    try:
        return sg.load_catalogue(chosen)
    except BadInput as exc:
        notes.append(f"signatures: {exc}; matched against the shipped catalogue only")
        return sg.load_catalogue()


def _data_urls(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.startswith("data:image/"):
            yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _data_urls(v)
    elif isinstance(value, list):
        for v in value:
            yield from _data_urls(v)


def inflight_images(
    inflight: Sequence[Mapping[str, Any]],
) -> Iterator[tuple[str, list[mt.ImageSize]]]:
    """The sizes of the images (data URLs) of each request in flight."""
    for entry in inflight:
        urls = list(_data_urls(entry.get("body") or entry.get("payload")))
        if not urls:
            continue
        from PIL import Image  # only when there are images: pillow costs ~0.1 s to import

        sizes = []
        for url in urls:
            try:
                data = base64.b64decode(url.split(",", 1)[1], validate=False)
                with Image.open(io.BytesIO(data)) as img:
                    sizes.append(mt.ImageSize(*img.size))
            except (IndexError, ValueError, OSError, binascii.Error):
                continue
        yield str(entry.get("index", entry.get("source", "?"))), sizes
