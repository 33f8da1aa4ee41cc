"""Loopback ports, polling with deadlines and a tiny HTTP client."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def free_port(*, below: int = 65536) -> int:
    """A loopback TCP port that was free a moment ago.

    Binding port 0 lets the kernel choose; the socket is closed again, so
    whoever uses the port must still be ready to retry when another process
    takes it in between (every server helper here retries).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if port < below:
            return port
    raise RuntimeError(f"no free loopback port below {below}")


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> T:
    """Polls ``condition`` until it returns something truthy; AssertionError at the deadline.

    The message says what was awaited and, via ``details``, what the world
    looked like at the end (a log tail, the last scrape), so a timeout in CI
    can be diagnosed from the report alone.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def http_get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    host: str = LOOPBACK,
    timeout: float = 5.0,
) -> Response:
    """GET http://host:port/path; any status is returned, connection errors raise OSError."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return Response(
            response.status, {name.lower(): value for name, value in response.getheaders()}, body
        )
    finally:
        connection.close()
