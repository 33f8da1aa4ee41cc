"""redis-server from Debian's package on a free loopback port, stopped by pid.

It starts in ~50 ms and can be SIGKILLed and restarted on the same port (the
broker-outage tests). The tests run it without persistence; the demo with
AOF on (a Redis broker without persistence is an alert of its own).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path

from stack.net import LOOPBACK, free_port, wait_until
from stack.processes import ManagedProcess, executable


class RedisServer:
    """A throwaway redis-server on a free loopback port; AOF only if ``persistent``.

    ``extra_args`` are more redis-server options (e.g. ``--client-output-buffer-limit``).
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        persistent: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.persistent = persistent
        self.extra_args = list(extra_args)
        self.port = port  # fixed after the first successful start: restarts reuse it
        self.executable = executable("redis-server")
        self.process: ManagedProcess | None = None

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Starts and waits for PING. A new port is picked if the chosen one was taken.

        After the first start the port is fixed: a restart must come back where
        clients expect it, so it retries that port until the deadline.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            port = self.port if self.port is not None else free_port()
            process = self._spawn(port, deadline)
            if process is not None:
                self.port, self.process = port, process
                return self
            if time.monotonic() >= deadline:
                raise AssertionError(f"redis-server did not start\n{self.tail()}")
            time.sleep(0.05)

    def _spawn(self, port: int, deadline: float) -> ManagedProcess | None:
        """redis-server on ``port``, answering PING; None if it exited (port taken)."""
        process = ManagedProcess(
            f"redis-server :{port}",
            [
                self.executable,
                "--port",
                str(port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--logfile",
                "",
                *self.extra_args,
            ],
            self.directory / "redis.log",
        )
        self.process = process
        process.spawn()
        try:
            wait_until(
                lambda: self.ping(port) or not process.running,
                timeout=max(deadline - time.monotonic(), 0.1),
                what=f"redis-server to answer PING on port {port}",
                details=process.tail,
            )
        except AssertionError:
            process.stop()
            raise
        if process.running:
            return process
        process.stop()
        return None

    def tail(self) -> str:
        return self.process.tail() if self.process is not None else "(redis-server never ran)"

    def ping(self, port: int | None = None) -> bool:
        """PING over a raw socket: no client library, nothing to leak."""
        try:
            with socket.create_connection((LOOPBACK, port or self.port or 0), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None, "redis-server not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid (redis shuts down cleanly), SIGKILL after the deadline."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing its connections cleanly."""
        if self.process is not None:
            self.process.kill()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Back on the same port (clients reconnect to the URL they know); empty, no persistence."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
