"""Publishing on Celery's event exchange directly, as a buggy or hostile producer could."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery.events.event import get_exchange
from kombu import Connection


@dataclass(frozen=True)
class Raw:
    """A body sent as is, with the content type it claims."""

    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"


Body = Raw | dict[str, Any] | list[Any] | str | int


def _routing_key(body: Body) -> str:
    # Celery's routing key for an event is its type with dots; kombu's redis
    # fanout needs a key for the exporter's "#" binding to match.
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        return str(body["type"]).replace("-", ".")
    return "bad.event"


def publish(broker_url: str, bodies: Iterable[Body]) -> None:
    """Publishes each body as one message on the ``celeryev`` exchange, in order."""
    with Connection(broker_url) as connection:
        exchange = get_exchange(connection)
        # declared (auto_declare), or kombu's redis transport would route it as direct
        producer = connection.Producer(exchange=exchange)
        for body in bodies:
            if isinstance(body, Raw):
                producer.publish(
                    body.body,
                    exchange=exchange,
                    routing_key="bad.raw",
                    content_type=body.content_type,
                    content_encoding=body.content_encoding,
                    retry=True,
                )
            else:
                producer.publish(
                    body,
                    exchange=exchange,
                    routing_key=_routing_key(body),
                    serializer="json",
                    retry=True,
                )


def heartbeat(hostname: str, **fields: Any) -> dict[str, Any]:
    """A worker-heartbeat like a real worker's, for a worker that does not exist."""
    return {
        "type": "worker-heartbeat",
        "hostname": hostname,
        "timestamp": time.time(),
        "utcoffset": 0,
        "pid": 1,
        "clock": 1,
        "freq": 2.0,
        "active": 0,
        "processed": 0,
        "loadavg": [0.0, 0.0, 0.0],
        "sw_ident": "test",
        "sw_ver": "0",
        "sw_sys": "Linux",
        **fields,
    }


def zeros_bomb(size: int) -> bytes:
    """``size`` zero bytes zlib-compressed (kombu's "gzip") without ever holding them:
    about a thousandth of the size. A decompression bomb."""
    compressor = zlib.compressobj(9)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + compressor.flush()
