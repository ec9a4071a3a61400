"""Deterministic test images for vision-language requests (Pillow; pure computation).

Every image is unique per (seed, request, slot) so a server's multimodal cache, which hashes
pixels, cannot short-cut preprocessing; it is a smooth colour field (like a photo, so JPEG and PNG
sizes are realistic) made by upscaling a small seeded noise patch.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from PIL import Image


def cap_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """Scale ``(width, height)`` down, keeping the aspect ratio, to at most ``max_pixels``."""
    if max_pixels is None or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w = max(1, math.floor(width * scale))
    h = max(1, math.floor(height * scale))
    while w * h > max_pixels:  # floating point may land one pixel over
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def make_image(
    width: int, height: int, fmt: str, seed: tuple[int, ...], quality: int = 85
) -> bytes:
    """Encoded image bytes (``fmt`` is ``jpeg`` or ``png``), identical for identical arguments."""
    rng = np.random.default_rng(list(seed))
    patch = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(patch, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_url(data: bytes, fmt: str) -> str:
    """``data:image/jpeg;base64,...`` for an OpenAI ``image_url`` content part."""
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
