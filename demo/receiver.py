"""A webhook receiver for Alertmanager that prints each page and ticket as it arrives.

The demo's Alertmanager sends both receivers of deploy/alertmanager.yml here
(``page`` for critical, ``ticket`` for warning): each alert is printed with
its severity, name, task/queue/worker, summary and runbook link, firing or
resolved, and the demo incident it belongs to.

    python -m demo.receiver --port 9095    # alone, e.g. for your own Alertmanager
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from demo.console import say
from demo.timeline import incident_of

#: Alert label -> how the printout calls it.
SUBJECTS = (("name", "task"), ("queue_name", "queue"), ("hostname", "worker"))
MAX_BODY = 1 << 20


def describe(receiver: str, alert: dict[str, Any]) -> str:
    """The lines printed for one alert of a notification."""
    labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
    name = labels.get("alertname", "?")
    subject = " ".join(f"{word}={labels[label]}" for label, word in SUBJECTS if label in labels)
    incident = incident_of(name)
    lines = [
        f"{receiver.upper()} {str(alert.get('status', '?')).upper()}: "
        f"{labels.get('severity', '?')} {name} {subject}".rstrip()
        + (f"  (incident {incident})" if incident else ""),
        f"    {annotations.get('summary', '')}",
        f"    runbook: {annotations.get('runbook_url', '(none)')}",
    ]
    return "\n".join(lines)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        try:
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
            body = json.loads(self.rfile.read(length))
            receiver, alerts = str(body.get("receiver", "?")), list(body["alerts"])
        except (ValueError, KeyError, TypeError, AttributeError):
            say("receiver: ignored a notification that is not Alertmanager's webhook JSON")
            self.send_response(400)
            self.end_headers()
            return
        for alert in alerts:
            say(describe(receiver, alert if isinstance(alert, dict) else {}))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the alerts are the output."""


def serve(host: str, port: int) -> ThreadingHTTPServer:
    """Listens on host:port (0: a free one), serving from a daemon thread."""
    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="receiver", daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    say(f"receiver: listening on http://{args.host}:{server.server_port}/")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
