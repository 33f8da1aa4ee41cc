"""moto's server mode (from PyPI) on a free loopback port, stopped by pid.

An SQS-compatible API in memory, in ~2 s; a restart loses every queue, as a region
outage with lost state would.
"""

from __future__ import annotations

import time
from pathlib import Path

from stack.net import LOOPBACK, free_port, http_get, wait_until
from stack.processes import ManagedProcess, venv_executable


class MotoServer:
    """moto's server mode on a free loopback port: SQS (and every other AWS API) in memory.

    Clients reach it with ``endpoint_url`` (or a ``sqs://KEY:SECRET@127.0.0.1:PORT``
    broker URL, which kombu turns into that endpoint) and any credentials.
    """

    REGION = "us-east-1"
    ACCOUNT = "123456789012"  # moto's default account id

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port: int | None = None  # fixed after the first start: restarts reuse it
        self.process: ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def broker_url(self, key: str, secret: str) -> str:
        return f"sqs://{key}:{secret}@{LOOPBACK}:{self.port}"

    def answers(self) -> bool:
        try:
            return http_get(self.port or 0, "/moto-api/", timeout=1).status < 500
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> MotoServer:
        """Starts and waits for an HTTP answer; a new port if the chosen one was taken."""
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            port = self.port if self.port is not None else free_port()
            process = ManagedProcess(
                f"moto_server :{port}",
                [venv_executable("moto_server"), "-H", LOOPBACK, "-p", str(port)],
                self.directory / "moto.log",
            )
            self.process, self.port = process, port
            process.spawn()
            wait_until(
                lambda p=process: self.answers() or not p.running,  # type: ignore[misc]
                timeout=max(deadline - time.monotonic(), 0.1),
                what=f"moto_server to answer on port {port}",
                details=process.tail,
            )
            if process.running:
                return self
            if time.monotonic() >= deadline:
                raise AssertionError(f"moto_server did not start\n{process.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def restart(self, timeout: float = 30.0) -> MotoServer:
        """Back on the same port, with no queues: moto keeps nothing across a restart."""
        self.stop()
        return self.start(timeout)

    def tail(self) -> str:
        return self.process.tail() if self.process is not None else "(moto_server never ran)"
