"""EventStream: one kombu consumer on Celery's event exchange, reconnecting forever.

The queue is declared the way Celery's own EventReceiver declares it
(``celeryev.<id>``, auto-delete, TTL and expiry), bound to the ``celeryev``
exchange (fanout on Redis, topic on AMQP). Bodies are decoded here and handed
to the router; an undecodable body is a counted skip, a lost connection is
a reconnect with exponential backoff and jitter. Nothing here ends the
process.
"""

from __future__ import annotations

import contextlib
import json
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
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from celery_vitals.logs import RateLimitedLogger

log = logging.getLogger(__name__)
skip_log = RateLimitedLogger(log)

TICK_INTERVAL = 1.0


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with full jitter: uniform in [cap/2, cap] of the step's ceiling."""
    ceiling: float = min(cap, base * (2.0 ** min(attempt, 16)))
    return ceiling * (0.5 + 0.5 * rng())


class ReadAhead:
    """Buffered reads for py-amqp's plain TCP transport: one recv() serves many frames.

    py-amqp reads a frame in three exact-size recv() calls (header, payload,
    end byte), each after a poll() while drain_events has a timeout set: nine
    system calls for one event message, the largest cost of consuming events
    from RabbitMQ. This reads up to ``size`` bytes at a time and hands out
    frames from them. The unread bytes are the transport's own
    ``_read_buffer`` (where read_frame puts a partial frame back when a read
    times out) followed by ``data[pos:]``.
    """

    def __init__(self, transport: Any, size: int = 65536) -> None:
        self.transport = transport
        self.recv = transport.sock.recv
        self.size = size
        self.data = b""
        self.pos = 0

    @classmethod
    def install(cls, connection: Connection, drain_timeout: float | None = None) -> bool:
        """Reads ahead on a pyamqp connection over plain TCP; False where it does not apply.

        With ``drain_timeout`` (the timeout every drain_events call passes) the
        socket keeps that timeout: py-amqp otherwise sets it before each frame
        and restores it after, two ioctl calls a frame. Writes on the
        connection (its heartbeats) get the same timeout.
        """
        from amqp.transport import TCPTransport  # type: ignore[import-untyped]

        transport: Any = getattr(connection.connection, "transport", None)
        if type(transport) is not TCPTransport or not hasattr(transport, "_read_buffer"):
            return False  # not py-amqp over TCP (Redis, TLS, another version): unchanged
        transport._read = cls(transport).read
        if drain_timeout is not None:
            transport.sock.settimeout(drain_timeout)
        return True

    def read(self, n: int, initial: bool = False) -> bytes:
        """Exactly n bytes (py-amqp's ``_read``)."""
        pos, end = self.pos, self.pos + n
        if end <= len(self.data) and not self.transport._read_buffer:
            self.pos = end
            return self.data[pos:end]
        return self._fill(n)

    def _fill(self, n: int) -> bytes:
        transport = self.transport
        chunks = [transport._read_buffer, self.data[self.pos:]]
        have = len(chunks[0]) + len(chunks[1])
        transport._read_buffer, self.data, self.pos = b"", b"", 0
        try:
            while have < n:
                chunk = self.recv(max(self.size, n - have))
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                chunks.append(chunk)
                have += len(chunk)
        except BaseException:  # a timeout, mostly: keep what arrived for the next read
            transport._read_buffer = b"".join(chunks)
            raise
        self.data = b"".join(chunks)
        self.pos = n
        return self.data[:n]


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
        backoff_max: float = 30.0,
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
                log.warning("event stream unavailable (%s: %s); retrying in %.1fs",
                            type(error).__name__, error, delay)
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
        ReadAhead.install(connection, drain_timeout=TICK_INTERVAL)
        with Consumer(connection, queues=[self._queue(connection)], no_ack=True,
                      on_message=self._on_message, accept=["json"]):
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

    def _on_message(self, message: Message) -> None:
        try:
            if message.content_type == "application/json" and "compression" not in (
                    message.headers or ()):
                # plain JSON (what Celery sends): skip kombu's per-message registry lookup
                body = json.loads(message.body)
            else:
                body = message.decode()  # honours `accept`: pickle is refused
        except Exception as error:
            self.on_skip("undecodable_body")
            skip_log.warn_every("undecodable_body", "skipped: undecodable event message (%s: %s)",
                             type(error).__name__, error)
            return
        self.on_body(body)
