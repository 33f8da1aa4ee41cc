"""EventStream: one kombu consumer on Celery's event exchange, reconnecting forever.

The queue is declared the way Celery's own EventReceiver declares it
(``celeryev.<id>``, auto-delete, TTL and expiry), bound to the ``celeryev``
exchange (fanout on Redis, topic on AMQP). Messages are taken from the
transport before kombu builds its Message (``RedisTap``, ``FrameGuard``), so
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
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Queue

from celery_vitals import decode, installation
from celery_vitals.logs import RateLimitedLogger

log = logging.getLogger(__name__)
skip_log = RateLimitedLogger(log)

TICK_INTERVAL = 1.0
# The longest wait between two connection attempts. Kept short on purpose: an attempt
# on a broker that is down costs one refused connection, while every second asleep
# after the broker is back loses the events published meanwhile.
BACKOFF_MAX = 3.0


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
        chunks = [transport._read_buffer, self.data[self.pos :]]
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
                skip_log.warn_every(
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
        driver = connection.transport.driver_type
        if driver == "redis":
            RedisTap.install(channel, self._on_redis_payload)
            callback: Callable[[Any], None] = _never_called
        elif driver == "amqp":
            ReadAhead.install(connection, drain_timeout=TICK_INTERVAL)
            FrameGuard.install(connection)
            callback = self._on_amqp_message
        else:  # kombu's other transports (the unit tests' memory://): its own Message
            callback = self._on_kombu_message
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

    def _on_redis_payload(self, data: bytes) -> None:
        self._deliver(decode.redis_payload, data)

    def _on_amqp_message(self, message: Any) -> None:
        properties = message.properties

        def decoder(raw: bytes) -> Any:
            content_type = properties.get("content_type")
            FrameGuard.check(content_type)
            return decode.body(content_type, properties.get("application_headers"), raw)

        self._deliver(decoder, message.body)

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
        skip_log.warn_every(reason, "skipped: event message (%s): %s", reason, detail)


def _never_called(message: object) -> None:  # pragma: no cover - RedisTap delivers instead
    raise AssertionError("RedisTap delivers the event stream's messages")


class RedisTap:
    """Redis pub/sub payloads go to a handler as bytes, before kombu turns them into messages.

    kombu's Redis channel parses each payload as its JSON envelope and builds
    a Message from it; a payload that is not such an envelope (``null``, a
    list, properties without ``delivery_tag``, headers that are a string,
    JSON nested thousands deep) raises out of ``drain_events``, which costs
    the event stream a reconnect and every event in flight. Installed on the
    channel that consumes the event queue, this reads replies the way kombu
    does (``_receive_one``) and hands message payloads to ``decode``.
    """

    @staticmethod
    def install(channel: Any, handler: Callable[[bytes], None]) -> None:
        from kombu.utils.encoding import bytes_to_str

        connection_errors = channel.connection_errors

        def receive_one(client: Any) -> bool:
            try:
                response = client.parse_response()
            except connection_errors:
                channel._in_listen = None
                raise
            if not isinstance(response, list | tuple):
                return False
            payload = channel._handle_message(client, response)
            if not bytes_to_str(payload["type"]).endswith("message"):
                return False  # subscribe confirmations and the like
            handler(payload["data"])
            return True

        channel._receive_one = receive_one


class FrameGuard:
    """py-amqp frames from which no message can be built never reach py-amqp's parser.

    py-amqp parses a content header's properties recursively, so headers
    nested a few thousand deep raise RecursionError out of ``drain_events``
    (and a reconnect loses the events in flight); and it gathers a body of
    any size in memory. This sits in front of the connection's frame
    handler: a header it cannot parse, or one announcing a body past
    ``decode.MAX_BODY_BYTES`` (whose body frames are then dropped unread),
    is replaced by a header with a marker content type, so the message still
    arrives, and is counted as a skip.
    """

    UNDECODABLE = "application/x-celery-vitals-undecodable-headers"
    TOO_LARGE = "application/x-celery-vitals-too-large"
    SKIPS: ClassVar[dict[object, tuple[str, str]]] = {
        UNDECODABLE: ("malformed_headers", "AMQP headers py-amqp cannot parse"),
        TOO_LARGE: ("too_large", f"body larger than {decode.MAX_BODY_BYTES} bytes"),
    }

    def __init__(self, inner: Callable[[Any], Any], max_body: int) -> None:
        self.inner = inner
        self.max_body = max_body
        self.dropping: dict[int, int] = {}  # channel -> body bytes still to drop

    @classmethod
    def install(cls, connection: Connection, max_body: int = decode.MAX_BODY_BYTES) -> None:
        amqp_connection = connection.connection
        amqp_connection.on_inbound_frame = cls(amqp_connection.on_inbound_frame, max_body)

    def __call__(self, frame: tuple[int, int, Any]) -> Any:
        frame_type, channel, buf = frame
        if frame_type == 3 and channel in self.dropping:
            left = self.dropping[channel] - len(buf)
            if left > 0:
                self.dropping[channel] = left
            else:
                del self.dropping[channel]
            return False
        if frame_type != 2:
            return self.inner(frame)
        try:
            body_size: int = struct.unpack_from(">Q", buf, 4)[0]
        except struct.error:  # not a content header at all: py-amqp says so
            return self.inner(frame)
        if body_size > self.max_body:
            self.dropping[channel] = body_size
            return self.inner((2, channel, self.marker(self.TOO_LARGE, 0)))
        try:
            return self.inner(frame)
        except Exception:  # RecursionError mostly; the partial message waits for a header
            return self.inner((2, channel, self.marker(self.UNDECODABLE, body_size)))

    @classmethod
    def check(cls, content_type: object) -> None:
        """Raises the Skip for a message whose header this guard replaced."""
        if content_type in cls.SKIPS:
            raise decode.Skip(*cls.SKIPS[content_type])

    @staticmethod
    def marker(content_type: str, body_size: int) -> bytes:
        """A Basic content header with only a content type (AMQP 0-9-1, 4.2.6.1)."""
        name = content_type.encode()
        return struct.pack(">HHQHB", 60, 0, body_size, 0x8000, len(name)) + name
