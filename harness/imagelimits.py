"""Image limits on both sides of a vision-language run, and whether they agree (pure).

The server side is what the engine's argv enforces: vLLM's ``--mm-processor-kwargs`` (the image
processor's ``max_pixels``, or ``size.longest_edge`` as transformers 5 names it) and
``--limit-mm-per-prompt`` (images per request). The load side is what ``harness load`` sends
under the run's profiles (``load.max_image_pixels``, ``load.max_images_per_request``; the
``vlm-safe`` profile sets both sides). When they differ, the load measures another limit than
the one the server enforces, so :func:`image_limit_warnings` says so at plan time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.spec import LoadLimits

MM_PROCESSOR_KWARGS = "--mm-processor-kwargs"
LIMIT_MM_PER_PROMPT = "--limit-mm-per-prompt"


@dataclass(frozen=True)
class ServerImageLimits:
    """What the engine's argv caps (``None``: not set there, the model's defaults apply)."""

    max_pixels: int | None = None
    max_images: int | None = None


def _flag_values(argv: Sequence[str], flag: str) -> list[tuple[str, str]]:
    """``(key, value)`` for every ``flag VALUE``, ``flag=VALUE`` and dotted ``flag.key VALUE``
    (``key`` is ``""`` for the whole JSON value), in argv order: the last one wins, as in
    argparse."""
    found: list[tuple[str, str]] = []
    for i, token in enumerate(argv):
        name, eq, inline = token.partition("=")
        if name != flag and not name.startswith(flag + "."):
            continue
        key = name[len(flag) + 1 :]
        if eq:
            found.append((key, inline))
        elif i + 1 < len(argv):
            found.append((key, argv[i + 1]))
    return found


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _max_pixels_of(kwargs: dict[str, Any]) -> int | None:
    """``max_pixels`` wins over ``size.longest_edge`` (vLLM's Qwen-VL processors apply it
    last), at the top level or under ``images_kwargs``."""
    for scope in (kwargs, kwargs.get("images_kwargs")):
        if not isinstance(scope, dict):
            continue
        pixels = _positive_int(scope.get("max_pixels"))
        size = scope.get("size")
        if pixels is None and isinstance(size, dict):
            pixels = _positive_int(size.get("longest_edge"))
        if pixels is not None:
            return pixels
    return None


def server_image_limits(engine: str, argv: Sequence[str]) -> ServerImageLimits:
    """The image limits ``argv`` sets on ``engine`` (only vLLM has pixel and count flags)."""
    if engine != "vllm":
        return ServerImageLimits()
    max_pixels: int | None = None
    for key, value in _flag_values(argv, MM_PROCESSOR_KWARGS):
        if key == "":
            max_pixels = _max_pixels_of(_json_object(value))
        elif key in ("max_pixels", "size.longest_edge"):
            max_pixels = _positive_int(value)
    max_images: int | None = None
    for key, value in _flag_values(argv, LIMIT_MM_PER_PROMPT):
        image: Any
        if key == "":
            image = _json_object(value).get("image")
        elif key in ("image", "image.count"):
            image = value
        else:
            continue
        if isinstance(image, dict):  # {"image": {"count": 2, "width": ..., "height": ...}}
            image = image.get("count")
        max_images = _positive_int(image)
    return ServerImageLimits(max_pixels=max_pixels, max_images=max_images)


def image_limit_warnings(engine: str, argv: Sequence[str], load: LoadLimits) -> list[str]:
    """Warnings where the server's image limits and ``harness load``'s disagree."""
    if engine == "sim":
        return []
    warnings: list[str] = []
    if engine == "lmdeploy":
        if load.max_image_pixels is not None:
            warnings.append(
                f"harness load caps images at {load.max_image_pixels} pixels, but LMDeploy has "
                "no server-side pixel limit (only a request's own mm_processor_kwargs): other "
                "clients' images reach the vision encoder at the model's processor limit"
            )
        return warnings
    server = server_image_limits(engine, argv)
    if server.max_pixels != load.max_image_pixels:
        warnings.append(
            _disagreement(
                server.max_pixels,
                load.max_image_pixels,
                server_side=f"scales images down to {server.max_pixels} pixels "
                f"({MM_PROCESSOR_KWARGS} max_pixels)",
                load_side=f"scales them to {load.max_image_pixels} (load.max_image_pixels)",
                server_unset=f"sets no pixel limit ({MM_PROCESSOR_KWARGS} max_pixels): other "
                "clients' images are scaled only to the model's own processor default",
                load_unset="sends them at the workload's sizes (no load.max_image_pixels)",
            )
        )
    if server.max_images != load.max_images_per_request:
        warnings.append(
            _disagreement(
                server.max_images,
                load.max_images_per_request,
                server_side=f"refuses more than {server.max_images} images per request "
                f"({LIMIT_MM_PER_PROMPT})",
                load_side=f"sends at most {load.max_images_per_request} "
                "(load.max_images_per_request)",
                server_unset=f"sets no image count limit ({LIMIT_MM_PER_PROMPT})",
                load_unset="sends as many as the workload asks for "
                "(no load.max_images_per_request): requests over the limit fail",
            )
        )
    return warnings


def _disagreement(
    on_server: int | None,
    on_load: int | None,
    *,
    server_side: str,
    load_side: str,
    server_unset: str,
    load_unset: str,
) -> str:
    if on_server is None:
        return f"harness load {load_side} but the server {server_unset}"
    if on_load is None:
        return (
            f"the server {server_side} but harness load {load_unset}; set it in a profile "
            "(vlm-safe sets both sides)"
        )
    return (
        f"the server {server_side} but harness load {load_side}: make them agree, or the "
        "load measures another limit than the server enforces"
    )
