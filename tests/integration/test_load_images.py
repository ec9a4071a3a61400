"""``harness load -w vlm-mixed``: what requests.jsonl says about each image (size, format, bytes,
the size asked for) is what went over the wire, with and without the vlm-safe caps.

A small HTTP server on 127.0.0.1 keeps every request body; the records are checked against the
images decoded from those bodies.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.integration.harnesscli import only_dir, run

pytestmark = pytest.mark.integration

STREAM = (
    b"".join(
        b"data: " + json.dumps(event).encode() + b"\n\n"
        for event in (
            {
                "id": "c",
                "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
            },
            {
                "id": "c",
                "choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": "stop"}],
            },
            {"id": "c", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
        )
    )
    + b"data: [DONE]\n\n"
)


class _Capture(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(STREAM)))
        self.end_headers()
        self.wfile.write(STREAM)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []
    handler = type("Handler", (_Capture,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def load(runs: Path, url: str, *args: str) -> list[dict[str, Any]]:
    done = run(
        runs, "load", "--url", url, "-w", "vlm-mixed", "--model", "m", "-c", "1",
        "--max-tokens", "2", "--no-progress", *args,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_dir = only_dir(runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["requests"]["completed"] == summary["run"]["requests"]
    lines = (run_dir / "requests.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["index"])


def sent_images(body: dict[str, Any]) -> list[tuple[bytes, str, Image.Image]]:
    out = []
    for part in body["messages"][-1]["content"][1:]:
        header, b64 = part["image_url"]["url"].split(",", 1)
        data = base64.b64decode(b64)
        out.append((data, header, Image.open(io.BytesIO(data))))
    return out


def check(records: list[dict[str, Any]], bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record's images against the body sent for it (one request at a time: in order)."""
    assert len(records) == len(bodies)
    images = []
    for record, body in zip(records, bodies, strict=True):
        sent = sent_images(body)
        assert len(record["images"]) == len(sent) >= 1
        for image, (data, header, decoded) in zip(record["images"], sent, strict=True):
            assert image["bytes"] == len(data)
            assert (image["width"], image["height"]) == decoded.size
            assert image["format"] == decoded.format.lower()
            assert header == f"data:image/{image['format']};base64"
            images.append(image)
    return images


def test_records_match_the_images_sent(tmp_path: Path, capture: Any) -> None:
    url, bodies = capture
    records = load(tmp_path / "free", url, "-n", "4")
    images = check(records, bodies)
    # Nothing capped: every image went at the size the workload asked for.
    assert all("requested" not in i for i in images)
    assert max(i["width"] * i["height"] for i in images) >= 1920 * 1080


def test_records_match_the_capped_images_sent(tmp_path: Path, capture: Any) -> None:
    url, bodies = capture
    cap = 100_000
    records = load(
        tmp_path / "capped", url, "-n", "6", "--max-image-pixels", str(cap),
        "--max-images-per-request", "1",
    )  # fmt: skip
    images = check(records, bodies)
    assert len(images) == len(records)  # one image per request at most
    assert all(i["width"] * i["height"] <= cap for i in images)
    scaled = [i for i in images if "requested" in i]
    assert scaled, "vlm-mixed asks for images over 100000 pixels"
    for i in scaled:
        width, height = i["requested"]
        assert width * height > cap
        # Scaled, not cropped: both sides by the same factor (to a pixel or two of rounding).
        scale = (cap / (width * height)) ** 0.5
        assert abs(i["width"] - width * scale) < 2 and abs(i["height"] - height * scale) < 2
