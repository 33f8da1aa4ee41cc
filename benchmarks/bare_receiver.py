"""A Celery event receiver that decodes and counts, and does nothing else.

Why: it is the ceiling the exporter is measured against. It consumes the
``celeryev`` exchange exactly the way celery-vitals' EventStream does (same
queue arguments, kombu Consumer with ``no_ack``, ``message.decode()``, and on
RabbitMQ the same buffered socket reads, celery_vitals.brokers.amqp.events.ReadAhead), so
the difference between the two is the exporter's own work per event.

Run by benchmarks/throughput.py, one per broker run:

    python benchmarks/bare_receiver.py --broker-url redis://127.0.0.1:PORT/0 \
        --expect 900000 --status /tmp/x/bare

It writes ``STATUS.ping`` when it has seen the first control ping (the queue
is bound), and ``STATUS.done`` (JSON) once it has counted ``--expect`` events
or has been idle for ``--idle`` seconds after the first one; then it waits to
be terminated so that its CPU time can still be read from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from celery_vitals.brokers.amqp.events import ReadAhead

PING_TYPE = "bench-ping"


class Counter:
    """Counts events in message bodies; control pings are noted, not counted."""

    def __init__(self) -> None:
        self.events = 0
        self.bodies = 0
        self.pinged = False
        self.first: float | None = None
        self.last: float | None = None

    def on_message(self, message: Message) -> None:
        body: Any = message.decode()
        if type(body) is list:
            self.events += len(body)
        elif type(body) is dict and body.get("type") == PING_TYPE:
            self.pinged = True
            return
        else:
            self.events += 1
        self.bodies += 1
        self.last = time.time()
        if self.first is None:
            self.first = self.last


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: the orchestrator polls for the file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--expect", type=int, required=True, help="events to wait for")
    parser.add_argument("--status", type=Path, required=True, help="status file prefix")
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds without events after which counting stops"
    )
    parser.add_argument(
        "--queue-ttl",
        type=float,
        default=5.0,
        help="message TTL of the event queue (AMQP), as the exporter's",
    )
    parser.add_argument("--queue-expires", type=float, default=60.0)
    args = parser.parse_args(argv)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    counter = Counter()
    ping_path = Path(f"{args.status}.ping")
    done_path = Path(f"{args.status}.done")
    done = False
    with Connection(args.broker_url) as connection:
        queue = Queue(
            f"celeryev.bench-bare.{uuid.uuid4().hex[:8]}",
            exchange=get_exchange(connection),
            routing_key="#",
            auto_delete=True,
            durable=False,
            exclusive=True,
            message_ttl=args.queue_ttl,
            expires=args.queue_expires,
        )
        connection.ensure_connection(max_retries=0)
        # the same reads as EventStream, so the ratio times only the exporter's own work
        ReadAhead.install(connection, drain_timeout=0.5)
        with Consumer(
            connection, queues=[queue], no_ack=True, accept=["json"], on_message=counter.on_message
        ):
            while not stopping:
                with suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
                if counter.pinged and not ping_path.exists():
                    _write(ping_path, {"pinged": True})
                if done:
                    continue
                idle = counter.last is not None and time.time() - counter.last > args.idle
                if counter.events >= args.expect or idle:
                    done = True
                    _write(
                        done_path,
                        {
                            "events": counter.events,
                            "bodies": counter.bodies,
                            "first": counter.first,
                            "last": counter.last,
                            "idle_stop": idle and counter.events < args.expect,
                        },
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
