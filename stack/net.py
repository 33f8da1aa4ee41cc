"""Loopback ports, polling with deadlines and a tiny HTTP client."""

from __future__ import annotations

import http.client
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports chosen by ``bind(0)`` (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """``count`` consecutive loopback ports, free when returned (a port range to listen on).

    Drawn from below the kernel's ephemeral range: every other test process
    gets its ports from ``bind(0)`` (inside that range), and a range there
    could be half taken by one of them between this check and its use.
    """
    low, high = ephemeral_range()
    # below the range; on a kernel whose ephemeral range starts low, above it
    first_choices = (10000, low - count) if low - count > 10000 else (high + 1, 65536 - count)
    pick = random.Random()
    for _ in range(200):
        first = pick.randrange(*first_choices)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((LOOPBACK, port))
            return list(range(first, first + count))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free loopback ports")


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
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Polls ``condition`` until it returns something truthy; AssertionError at the deadline.

    The message says what was awaited and, via ``details``, what the world
    looked like at the end (a log tail, the last scrape, the last ignored
    error), so a timeout in CI can be diagnosed from the report alone. An
    exception of a type in ``ignore`` counts as "not yet" (a server not
    listening yet); any other one propagates.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
        except ignore as error:
            last_error = error
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            if last_error is not None:
                extra += f"\nlast error: {last_error!r}"
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
