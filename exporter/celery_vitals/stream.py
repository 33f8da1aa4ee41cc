"""EventStream: one kombu consumer on Celery's event exchange, reconnecting forever.

The queue is declared the way Celery's own EventReceiver declares it
(``celeryev.<id>``, auto-delete, TTL and expiry), bound to the ``celeryev``
exchange (fanout on Redis, topic on AMQP). Messages are taken from the
transport before kombu builds its Message (the broker's hooks: brokers/redis/events.py,
brokers/amqp/events.py), so
that nothing a publisher sends can raise out of ``drain_events``: decode.py
turns each into a body for the router or a counted skip. A lost connection
is a reconnect with exponential backoff and jitter, capped at BACKOFF_MAX.
Nothing here ends the process.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Queue

from celery_vitals import decode, installation
from celery_vitals.brokers import for_driver
from celery_vitals.logs import RateLimitedLogger

log = logging.getLogger(__name__)
rate_limited = RateLimitedLogger(log)

TICK_INTERVAL = 1.0
# The longest wait between two connection attempts. Kept short on purpose: an attempt
# on a broker that is down costs one refused connection, while every second asleep
# after the broker is back loses the events published meanwhile.
BACKOFF_MAX = 3.0


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with full jitter: uniform in [cap/2, cap] of the step's ceiling."""
    ceiling: float = min(cap, base * (2.0 ** min(attempt, 16)))
    return ceiling * (0.5 + 0.5 * rng())


class EventStream:
    def __init__(
        self,
        app: Celery,
        on_body: Callable[[Any], None],
        on_tick: Callable[[], None],
        on_skip: Callable[[str], None],
        *,
        queue_ttl: float,
        queue_expires: float,
        queue_max_length: int | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = BACKOFF_MAX,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.app = app
        self.on_body = on_body
        self.on_tick = on_tick
        self.on_skip = on_skip
        self.queue_ttl = queue_ttl
        self.queue_expires = queue_expires
        self.queue_max_length = queue_max_length
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng
        self.connected = threading.Event()
        self.reconnects = 0
        self._stopping = threading.Event()
        self._node_id = f"celery-vitals.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Consume until stop(); reconnects on any failure."""
        attempt = 0
        ever_connected = False
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    # one attempt: the backoff below does the waiting, not kombu
                    connection.ensure_connection(max_retries=0)
                    if ever_connected:
                        self.reconnects += 1
                        log.info("event stream reconnected")
                    else:
                        log.info("event stream connected to %s", connection.as_uri())
                    ever_connected = True
                    attempt = 0
                    self._consume(connection)
            except Exception as error:  # any failure: never let the thread die
                self.connected.clear()
                if self._stopping.is_set():
                    break
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, self.rng)
                attempt += 1
                rate_limited.warn_every(
                    "unavailable",
                    "event stream unavailable (%s); retrying every %.0fs at most",
                    installation.explain(error),  # a missing package: which, and the fix
                    self.backoff_max,
                )
                self._stopping.wait(delay)
        self.connected.clear()

    def _queue(self, connection: Connection) -> Queue:
        return Queue(
            f"{self.app.conf.event_queue_prefix}.{self._node_id}",
            exchange=get_exchange(connection, name=self.app.conf.event_exchange),
            routing_key="#",
            auto_delete=True,
            durable=False,
            exclusive=True,
            message_ttl=self.queue_ttl,
            expires=self.queue_expires,
            max_length=self.queue_max_length,  # RabbitMQ drops the oldest beyond it
        )

    def _consume(self, connection: Connection) -> None:
        channel = connection.default_channel
        queue = self._queue(connection).bind(channel)
        queue.declare()
        broker = for_driver(connection.transport.driver_type)
        hooked = (
            broker.event_callback(connection, channel, self._deliver, TICK_INTERVAL)
            if broker is not None
            else None
        )
        # kombu's other transports (the unit tests' memory://): its own Message
        callback = hooked or self._on_kombu_message
        channel.basic_consume(
            queue=queue.name, no_ack=True, callback=callback, consumer_tag=self._node_id
        )
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):  # idle: time to tick
                connection.drain_events(timeout=TICK_INTERVAL)
            if not self.connected.is_set():
                # only now: kombu's Redis transport subscribes on the first poll
                self.connected.set()
            if time.monotonic() >= next_tick:
                self.on_tick()
                next_tick = time.monotonic() + TICK_INTERVAL

    def _on_kombu_message(self, message: Any) -> None:
        self._deliver(
            lambda raw: decode.body(message.content_type, message.headers, raw), message.body
        )

    def _deliver(self, decoder: Callable[[Any], Any], raw: Any) -> None:
        """Decode one message and route its body; a message that cannot be used is a skip."""
        try:
            body = decoder(raw)
        except decode.Skip as skip:
            self._skip(skip.reason, str(skip))
            return
        except Exception as error:  # a decoder bug must cost one message, not the stream
            self._skip("undecodable_body", f"{type(error).__name__}: {error}")
            return
        self.on_body(body)

    def _skip(self, reason: str, detail: str) -> None:
        self.on_skip(reason)
        rate_limited.warn_every(reason, "skipped: event message (%s): %s", reason, detail)
