"""The event stream on RabbitMQ: buffered socket reads, and frames py-amqp cannot parse
kept away from its parser."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar

from kombu import Connection

from celery_vitals import decode
from celery_vitals.brokers import Deliver


def event_callback(
    connection: Connection, deliver: Deliver, drain_timeout: float
) -> Callable[[Any], None]:
    """Installs ReadAhead and FrameGuard on the connection consuming the event queue; the
    consumer callback it returns decodes each message (a guarded one is a skip)."""
    ReadAhead.install(connection, drain_timeout=drain_timeout)
    FrameGuard.install(connection)

    def on_message(message: Any) -> None:
        properties = message.properties

        def decoder(raw: bytes) -> Any:
            content_type = properties.get("content_type")
            FrameGuard.check(content_type)
            return decode.body(content_type, properties.get("application_headers"), raw)

        deliver(decoder, message.body)

    return on_message


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
