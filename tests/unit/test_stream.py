"""EventStream on kombu's in-memory transport: decoding, skips and backoff."""

from __future__ import annotations

import struct
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Producer

from celery_vitals.brokers.amqp.events import ReadAhead
from celery_vitals.stream import EventStream, backoff_delay
from stack.net import wait_until
from tests.support.pipeline import PipelineHarness, event


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert backoff_delay(0, 0.5, 30, lambda: 0.0) == 0.25
    assert backoff_delay(0, 0.5, 30, lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, lambda: 1.0) == 4.0
    assert backoff_delay(50, 0.5, 30, lambda: 1.0) == 30.0
    assert backoff_delay(50, 0.5, 30, lambda: 0.0) == 15.0


def test_stream_decodes_bodies_and_counts_undecodable_ones() -> None:
    h = PipelineHarness()
    app = Celery("t", broker="memory://", set_as_current=False)
    stream = EventStream(
        app, h.router.handle, h.router.tick, h.router.count_skip, queue_ttl=5, queue_expires=60
    )
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        wait_until(stream.connected.is_set, timeout=10, what="the stream connected", interval=0.01)
        with Connection("memory://") as connection:
            producer = Producer(connection.default_channel, exchange=get_exchange(connection))
            producer.publish(
                [event("task-received", uuid="u1", name="t"), event("task-started", uuid="u1")],
                routing_key="task.multi",
            )
            producer.publish(
                b"{not json",
                routing_key="task.started",
                content_type="application/json",
                content_encoding="utf-8",
            )
            producer.publish(
                b"\x80\x04pickled",
                routing_key="task.started",
                content_type="application/x-python-serialize",
                content_encoding="binary",
            )
        wait_until(
            lambda: h.value("celery_vitals_events_skipped_total", reason="undecodable_body") == 2,
            timeout=10,
            what="2 undecodable bodies skipped",
            interval=0.01,
        )
        assert h.task("celery_task_started_total", "t") == 1
    finally:
        stream.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not stream.connected.is_set()


# -- ReadAhead: py-amqp's frame reader fed from one recv() of many frames -----------------


def _frame(payload: bytes, frame_type: int = 3, channel: int = 1) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


class _ScriptedSocket:
    """recv() returns the scripted chunks in turn; an exception in the script is raised."""

    def __init__(self, script: list[bytes | BaseException]) -> None:
        self.script = script
        self.sizes: list[int] = []

    def recv(self, size: int) -> bytes:
        self.sizes.append(size)
        item = self.script.pop(0) if self.script else b""
        if isinstance(item, BaseException):
            raise item
        return item


def _transport(script: list[bytes | BaseException]) -> Any:
    from amqp.transport import TCPTransport

    transport = TCPTransport.__new__(TCPTransport)  # no connection: read_frame only
    transport.sock = _ScriptedSocket(script)
    transport._read_buffer = b""
    transport._read = ReadAhead(transport).read
    return transport


def test_read_ahead_serves_many_frames_from_one_recv() -> None:
    frames = [_frame(f"body {i}".encode() * (i + 1)) for i in range(50)]
    transport = _transport([b"".join(frames)])
    got = [transport.read_frame() for _ in frames]
    assert [payload for _, _, payload in got] == [f"body {i}".encode() * (i + 1) for i in range(50)]
    assert len(transport.sock.sizes) == 1 and transport.sock.sizes[0] >= 65536


def test_read_ahead_keeps_a_frame_split_by_timeouts_whole() -> None:
    first, second, third = _frame(b"one"), _frame(b"two" * 100), _frame(b"three")
    transport = _transport(
        [first + second[:3], TimeoutError(), second[3:10], TimeoutError(), second[10:] + third]
    )
    assert transport.read_frame()[2] == b"one"
    with pytest.raises(TimeoutError):  # mid-header: nothing consumed for good
        transport.read_frame()
    with pytest.raises(TimeoutError):  # mid-payload: read_frame puts the header back
        transport.read_frame()
    assert transport.read_frame()[2] == b"two" * 100
    assert transport.read_frame()[2] == b"three"
    with pytest.raises(OSError, match="closed"):
        transport.read_frame()


def test_read_ahead_reads_a_frame_larger_than_its_buffer() -> None:
    big = _frame(b"x" * 200_000)
    transport = _transport([big[:70_000], big[70_000:140_000], big[140_000:]])
    assert transport.read_frame()[2] == b"x" * 200_000


def test_read_ahead_applies_to_pyamqp_over_tcp_only() -> None:
    with Connection("memory://") as connection:
        connection.ensure_connection(max_retries=0)
        assert ReadAhead.install(connection) is False


class _TimedSocket(_ScriptedSocket):
    """Records settimeout calls, as py-amqp's having_timeout makes them around each frame."""

    def __init__(self, script: list[bytes | BaseException]) -> None:
        super().__init__(script)
        self.timeout: float | None = None
        self.set_calls: list[float | None] = []

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.set_calls.append(timeout)
        self.timeout = timeout


def test_read_ahead_leaves_the_drain_timeout_on_the_socket() -> None:
    from amqp.transport import TCPTransport

    def connection_with(sock: _TimedSocket) -> Any:
        transport = TCPTransport.__new__(TCPTransport)
        transport.sock, transport._read_buffer = sock, b""
        return SimpleNamespace(connection=SimpleNamespace(transport=transport))

    def drain_three(connection: Any) -> list[bytes]:
        transport = connection.connection.transport
        payloads = []
        for _ in range(3):  # what drain_events(timeout=1.0) does per frame
            with transport.having_timeout(1.0):
                payloads.append(transport.read_frame()[2])
        return payloads

    frames = b"".join(_frame(bytes([65 + i])) for i in range(3))
    plain = connection_with(_TimedSocket([frames]))
    assert ReadAhead.install(plain) is True
    assert drain_three(plain) == [b"A", b"B", b"C"]
    assert plain.connection.transport.sock.set_calls == [1.0, None] * 3  # set, restore

    kept = connection_with(_TimedSocket([frames]))
    assert ReadAhead.install(kept, drain_timeout=1.0) is True
    assert drain_three(kept) == [b"A", b"B", b"C"]
    assert kept.connection.transport.sock.set_calls == [1.0]  # once, at install
