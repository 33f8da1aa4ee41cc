"""A real HTTP server on a free loopback port that answers each path with a canned
(status, Content-Type, body): what an exporter, a Prometheus or something else entirely
would answer, for the doctor's HTTP client."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stack.net import LOOPBACK

Answer = tuple[int, str, str]  # status, Content-Type ("" for none), body


@contextmanager
def serving(answers: Mapping[str, Answer]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Yields the server's base URL (http://127.0.0.1:PORT) and the requests it got: their
    path (query included) and Authorization header; a path without an answer is a 404."""
    asked: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append((self.path, self.headers.get("Authorization", "")))
            status, kind, body = answers.get(self.path.split("?")[0], (404, "", "not found"))
            data = body.encode()
            self.send_response(status)
            if kind:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:  # quiet
            return

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="canned-http", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
