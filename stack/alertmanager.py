"""A real Alertmanager (Debian's ``prometheus-alertmanager``) and a webhook receiver.

``AlertmanagerServer`` runs with a given configuration file (deploy/alertmanager.yml,
or a copy whose webhook URLs point at a ``WebhookReceiver``) on a free loopback port,
without clustering, and is stopped by pid. ``post`` sends alerts as Prometheus would,
``alerts`` reads what it holds through its v2 API (active, suppressed by an
inhibition, ...). ``WebhookReceiver`` is a tiny HTTP server in a thread that records
every notification Alertmanager delivers: what a person on call would have received,
and when.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.net import LOOPBACK, free_port, http_get, wait_until
from stack.processes import ManagedProcess, executable


class AlertmanagerServer:
    """``prometheus-alertmanager --config.file=config`` on a free loopback port."""

    def __init__(self, directory: Path, config: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
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

    @property
    def address(self) -> str:
        """host:port, where Prometheus sends alerts."""
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0) -> AlertmanagerServer:
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

    def __enter__(self) -> AlertmanagerServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

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


@dataclass(frozen=True)
class Notification:
    """One alert of one webhook notification: who got it, when, and in which state."""

    receiver: str  # the path it was posted to, e.g. "page"
    received_at: float  # wall clock (time.time()) when the receiver got it
    status: str  # "firing" | "resolved"
    labels: dict[str, str]
    starts_at: str
    ends_at: str

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")


class WebhookReceiver:
    """Records every alert of every webhook POST; each path is a receiver (/page, /ticket)."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name=f"webhook-receiver:{self.port}"
        )

    def url(self, receiver: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{receiver}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.record(self.path.strip("/"), json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        return Handler

    def record(self, path: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self.notifications.extend(
                Notification(
                    path,
                    now,
                    alert["status"],
                    dict(alert["labels"]),
                    alert.get("startsAt", ""),
                    alert.get("endsAt", ""),
                )
                for alert in body.get("alerts", [])
            )

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving (if it started) and closes the socket; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
