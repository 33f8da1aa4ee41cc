"""prometheus-alertmanager from Debian's package on a free loopback port, stopped by pid.

``post`` sends alerts as Prometheus would, ``alerts`` reads what it holds
through its v2 API (active, suppressed by an inhibition, ...).
"""

from __future__ import annotations

import datetime
import http.client
import json
from pathlib import Path
from typing import Any

from demo.stack.net import LOOPBACK, free_port, http_get, wait_until
from demo.stack.processes import ManagedProcess, executable


class Alertmanager:
    """``prometheus-alertmanager --config.file=config`` on a free loopback port."""

    def __init__(self, directory: Path, config: Path) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            f"alertmanager :{self.port}",
            [
                executable("prometheus-alertmanager"),
                f"--config.file={config}",
                f"--storage.path={directory / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            directory / "alertmanager.log",
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0) -> Alertmanager:
        self.process.spawn()
        wait_until(
            self.ready,
            timeout=timeout,
            what="alertmanager /-/ready",
            details=self.process.tail,
            interval=0.1,
        )
        return self

    def ready(self) -> bool:
        self.process.assert_running()
        try:
            return http_get(self.port, "/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.stop()

    def post(self, *alerts: dict[str, str]) -> None:
        """Fires alerts (label sets) now, as Prometheus would send them."""
        now = datetime.datetime.now(datetime.UTC).isoformat()
        body = json.dumps([{"labels": labels, "startsAt": now} for labels in alerts])
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
        try:
            connection.request("POST", "/api/v2/alerts", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise AssertionError(f"POST /api/v2/alerts: {response.status} {response.read()!r}")
        finally:
            connection.close()

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: every alert it holds, with labels and status.state."""
        response = http_get(self.port, "/api/v2/alerts", timeout=5)
        if response.status != 200:
            raise AssertionError(f"GET /api/v2/alerts: {response.status} {response.text}")
        result: list[dict[str, Any]] = json.loads(response.body)
        return result
