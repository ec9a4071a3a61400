"""A local HTTP server speaking the part of the Hugging Face hub's API that downloads use
(``HF_ENDPOINT`` points ``huggingface_hub`` at it): the revision endpoint, the recursive tree
listing (sizes, git blob ids, LFS SHA-256), and ``/resolve/`` with HEAD, redirect-free GET and
Range requests.

A test can make the download of one file stop after N bytes (``stall``): the server sends N
bytes, sets ``stalled`` and holds the connection until ``release`` is set, so the test can kill
the client in the middle of a file and then check the next run resumes with a Range request.
Every request is logged (method, path, Range header). 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Stall:
    path: str
    after_bytes: int
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class HubState:
    repo_id: str
    files: dict[str, bytes]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    stall: Stall | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, method: str, path: str, range_header: str | None) -> None:
        with self.lock:
            self.requests.append((method, path, range_header))

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of every GET of file ``name``."""
        suffix = f"/resolve/{COMMIT}/{name}"
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(suffix)]


def blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


def _entry(name: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "file",
        "path": name,
        "size": len(data),
        "oid": blob_id(data),
    }
    if name.endswith(LFS_SUFFIXES):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return entry


def make_handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

        def _json(self, data: object, status: int = 200) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            state.log("HEAD" if head else "GET", path, self.headers.get("Range"))
            repo = state.repo_id
            if path.startswith(f"/api/models/{repo}/revision/"):
                siblings = [{"rfilename": n} for n in sorted(state.files)]
                return self._json({"id": repo, "sha": COMMIT, "siblings": siblings})
            if path.startswith(f"/api/models/{repo}/tree/"):
                return self._json([_entry(n, d) for n, d in sorted(state.files.items())])
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                _rev, _, name = path[len(prefix) :].partition("/")
                if name in state.files:
                    return self._file(name, state.files[name], head)
            if path.startswith("/api/"):
                return self._json({"error": "Repository not found"}, 404)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()

        def _file(self, name: str, data: bytes, head: bool) -> None:
            start = 0
            range_header = self.headers.get("Range")
            if range_header and range_header.startswith("bytes="):
                first = range_header[len("bytes=") :].split("-", 1)[0]
                start = int(first) if first.isdigit() else 0
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            if name.endswith(LFS_SUFFIXES):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{blob_id(data)}"')
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            stall = state.stall
            if stall is not None and stall.path == name and not stall.release.is_set():
                cut = max(0, stall.after_bytes - start)
                self.wfile.write(body[:cut])
                self.wfile.flush()
                stall.stalled.set()
                stall.release.wait(120)
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client killed in the middle of a file (the resume test) resets its connection.
        return


@contextmanager
def fake_hub(repo_id: str, source_dir: Path) -> Iterator[tuple[str, HubState]]:
    """Serve the files of ``source_dir`` as repository ``repo_id``; yields (endpoint, state)."""
    files = {p.name: p.read_bytes() for p in sorted(source_dir.iterdir()) if p.is_file()}
    state = HubState(repo_id, files)
    server = _QuietServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        if state.stall is not None:
            state.stall.release.set()
        server.shutdown()
        server.server_close()
